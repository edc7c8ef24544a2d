#!/usr/bin/env python3
"""Turns a `cargo test` log into a JUnit XML report (for CI test report pages)."""
import re
import sys
from xml.sax.saxutils import quoteattr

log = open(sys.argv[1], encoding="utf-8", errors="replace").read()
cases = re.findall(r"^test (\S+) \.\.\. (ok|FAILED|ignored)$", log, re.M)
failed = sum(1 for _, r in cases if r == "FAILED")
skipped = sum(1 for _, r in cases if r == "ignored")
print('<?xml version="1.0" encoding="UTF-8"?>')
print(f'<testsuite name="cargo-test" tests="{len(cases)}" failures="{failed}" skipped="{skipped}">')
for name, result in cases:
    module, _, leaf = name.rpartition("::")
    attrs = f"classname={quoteattr(module or 'tests')} name={quoteattr(leaf)}"
    if result == "ok":
        print(f"  <testcase {attrs}/>")
    elif result == "ignored":
        print(f"  <testcase {attrs}><skipped/></testcase>")
    else:
        print(f'  <testcase {attrs}><failure message="failed"/></testcase>')
print("</testsuite>")
