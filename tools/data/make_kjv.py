#!/usr/bin/env python3
"""Rebuild data/kjv/kjv.txt from Debian's bible-kjv package (public domain text).

Run: apt-get install bible-kjv && bible -l100000 "gen1:1-rev22:21" | python3 tools/data/make_kjv.py > data/kjv/kjv.txt
One chapter per document; documents are separated by one blank line; verse numbers are dropped.
"""
import re
import sys

chapters, title, verses = [], None, []
for raw in sys.stdin:
    line = raw.rstrip("\n")
    if not line.strip():
        continue
    m = re.match(r"^\s+\d+ (.*)$", line)
    if m:
        verses.append(m.group(1).strip())
    elif line.startswith(" "):
        verses[-1] += " " + line.strip()
    elif verses or title is None or re.match(r"^\S.* \d+$", line):
        if title is not None:
            chapters.append(title + "\n" + "\n".join(verses))
        title, verses = line.strip(), []
    else:
        verses[-1] += " " + line.strip()
if title is not None:
    chapters.append(title + "\n" + "\n".join(verses))
sys.stdout.write("\n\n".join(chapters) + "\n")
