#!/usr/bin/env python3
"""The Python service's parsing approach, measured on the same lines as crates/core/benches/parser.rs.

One `re` pattern per field (the 13 fields the Rust benchmark reads, same patterns as its `regex` baseline),
each searched over every default-format line of tests/data/corpus. Prints lines per CPU-second
(time.process_time, so a busy machine does not skew it). Run by `bench/run.sh parser`.

    python3 bench/regex_baseline.py [PASSES]
"""
import pathlib
import re
import sys
import time

FIELDS = ["srcip", "dstip", "srcport", "dstport", "proto", "policyid", "action", "type", "subtype", "srcintf",
          "devname", "devid", "vd"]
CORPUS = pathlib.Path(__file__).resolve().parent.parent / "tests" / "data" / "corpus"


def default_lines():
    # The Rust benchmark keeps the lines its parser reads as `default` format: exactly the 243 lines of the
    # *.default.log files (`integration parse` reports every other file as rfc3164, rfc5424, cef or csv).
    lines = []
    for path in sorted(CORPUS.glob("*.default.log")):
        for raw in path.read_bytes().split(b"\n"):
            if raw:
                lines.append(raw.decode("utf-8", "replace"))
    return lines


def main():
    passes = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    patterns = [re.compile(r'(?:^|[\s,])' + f + r'="?([^"\s,]*)') for f in FIELDS]
    lines = default_lines()
    hits = 0
    start = time.process_time()
    for _ in range(passes):
        for line in lines:
            for pattern in patterns:
                m = pattern.search(line)
                if m and m.group(1):
                    hits += 1
    cpu = time.process_time() - start
    n = len(lines) * passes
    print(f"cpython {sys.version.split()[0]} re, one pattern per field: {n} lines in {cpu:.3f} s CPU = "
          f"{n / cpu:.0f} lines/s (hits per pass {hits // passes})")


if __name__ == "__main__":
    main()
