"""PyMISP against the MISP emulator: the calls a real client makes, with their real parsing.

Run by tests/e2e/contract.rs (which starts the emulator over TLS, seeds it and checks its state afterwards), with
the environment:

    MISP_URL      https://127.0.0.1:PORT
    MISP_KEY      the 40-character key
    MISP_CA       the emulator's CA certificate (PEM)
    MISP_IP       an ip-dst value the seed holds (to_ids, published)
    MISP_FEED_ID  the id of a seeded feed with caching enabled

Prints one line per check and exits 1 on the first failure. PyMISP logs through the `pymisp` logger: every record
at WARNING or above fails the run (PyMISP logs an ERROR when, for example, describeTypes is missing).
"""

import logging
import os
import sys


class Collect(logging.Handler):
    """Keeps every log record PyMISP emits."""

    def __init__(self):
        super().__init__(level=logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)


def check(name, condition, detail=""):
    if not condition:
        print(f"FAIL {name}: {detail}", flush=True)
        sys.exit(1)
    print(f"ok   {name}", flush=True)


def main():
    collected = Collect()
    logging.getLogger("pymisp").addHandler(collected)
    logging.getLogger("pymisp").setLevel(logging.INFO)

    from pymisp import MISPSighting, PyMISP

    url, key, ca = os.environ["MISP_URL"], os.environ["MISP_KEY"], os.environ["MISP_CA"]
    ip, feed_id = os.environ["MISP_IP"], os.environ["MISP_FEED_ID"]

    # The constructor: getVersion, users/view/me (expanded), describeTypes.
    misp = PyMISP(url, key, ssl=ca, timeout=10)
    check("connect: remote describeTypes used", misp.describe_types is not misp.describe_types_local,
          "PyMISP fell back to its bundled describeTypes")
    check("connect: types", "ip-src" in misp.types and "ip-dst|port" in misp.types, misp.types)
    check("connect: categories", "Network activity" in misp.categories, misp.categories)
    check("connect: sane defaults", misp.sane_default["ip-dst"]["default_category"] == "Network activity",
          misp.sane_default.get("ip-dst"))
    check("connect: role", misp._current_role.name == "admin" and misp._current_role.perm_sighting,
          misp._current_role.to_dict())
    check("connect: user", misp._current_user.email == "admin@admin.test", misp._current_user.to_dict())

    version = misp.misp_instance_version
    check("getVersion", version.get("version", "").startswith("2.5"), version)

    me = misp.get_user("me", pythonify=True)
    check("users/view/me", str(me.id) == "1" and me.org_id is not None, me.to_dict())
    user, role, settings = misp.get_user("me", pythonify=True, expanded=True)
    check("users/view/me expanded", role.perm_site_admin and settings == [], role.to_dict())

    described = misp.describe_types_remote
    check("describeTypes", set(described) == {"sane_defaults", "types", "categories", "category_type_mappings"},
          sorted(described))

    found = misp.search(controller="attributes", value=ip, type_attribute="ip-dst", to_ids=True,
                        pythonify=True)
    check("search attributes", len(found) == 1 and found[0].value == ip and found[0].type == "ip-dst",
          [a.to_dict() for a in found])
    attribute = found[0]
    check("search: attribute fields", attribute.to_ids is True and attribute.uuid and attribute.event_id,
          attribute.to_dict())
    nothing = misp.search(controller="attributes", value="192.0.2.123", pythonify=True)
    check("search: no match", nothing == [], nothing)

    sighting = MISPSighting()
    sighting.from_dict(value=ip, source="pymisp-contract", type="0")
    added = misp.add_sighting(sighting, pythonify=True)
    check("add_sighting", isinstance(added, MISPSighting) and added.source == "pymisp-contract",
          getattr(added, "to_dict", lambda: added)())
    by_attribute = misp.add_sighting({"source": "pymisp-contract-2"}, attribute=attribute, pythonify=True)
    check("add_sighting to an attribute", str(by_attribute.attribute_id) == str(attribute.id),
          getattr(by_attribute, "to_dict", lambda: by_attribute)())
    listed = misp.sightings(pythonify=True)
    sources = sorted(s.source for s in listed)
    check("sightings index", sources == ["pymisp-contract", "pymisp-contract-2"], sources)
    check("sightings index: attribute uuid", all(s.attribute_uuid == attribute.uuid for s in listed),
          [s.to_dict() for s in listed])

    feeds = misp.feeds(pythonify=True)
    check("feeds index", len(feeds) >= 1 and any(str(f.id) == feed_id for f in feeds),
          [f.to_dict() for f in feeds])
    feed = misp.get_feed(int(feed_id), pythonify=True)
    check("feed view", str(feed.id) == feed_id and feed.caching_enabled, feed.to_dict())
    cached = misp.cache_feed(int(feed_id))
    check("cache one feed", cached.get("success") is True, cached)
    cached = misp.cache_all_feeds()
    check("cache all feeds", cached.get("message") == "Feed caching job initiated.", cached)
    check("cache freetext feeds", misp.cache_freetext_feeds().get("saved") is True)
    check("cache misp feeds", misp.cache_misp_feeds().get("saved") is True)
    fetched = misp.fetch_feed(int(feed_id))
    check("fetch one feed", "result" in fetched, fetched)
    feed = misp.get_feed(int(feed_id), pythonify=True)
    check("feed view after caching", isinstance(feed.cache_timestamp, int), feed.to_dict())

    noisy = [f"{r.levelname}: {r.getMessage()}" for r in collected.records if r.levelno >= logging.WARNING]
    check("no warning or error logged by PyMISP", noisy == [], noisy)
    print("pymisp contract: all checks passed", flush=True)


if __name__ == "__main__":
    main()
