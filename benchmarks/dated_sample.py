"""A dated sample of the shared corpus for filter benchmarks (the shared corpus has no timestamps).

    python benchmarks/dated_sample.py ../shared/data/corpus sample.jsonl 12   # every news doc + 1/12 of the rest
    python benchmarks/dated_sample.py ../shared/data/eval heldout.jsonl 1     # every held-out document

Keeps every news document and the documents whose sha1(id) is divisible by MOD, and gives each a
deterministic timestamp, year 2000 + (sha1 // 7) mod 25, month 1 + (sha1 // 211) mod 12, day 15: a hash,
so an --after filter selects documents independently of their topic (a domain filter does not).
"""

import gzip
import hashlib
import json
import sys
from pathlib import Path


def main(root: str, out: str, keep_mod: str) -> None:
    mod = int(keep_mod)
    with open(out, "w", encoding="utf-8") as f:
        for path in sorted(Path(root).glob("*.jsonl.gz")):
            for line in gzip.open(path, "rt", encoding="utf-8"):
                doc = json.loads(line)
                h = int(hashlib.sha1(doc["id"].encode()).hexdigest(), 16)
                if doc["domain"] != "news" and h % mod:
                    continue
                doc["timestamp"] = f"{2000 + (h // 7) % 25}-{1 + (h // 211) % 12:02d}-15"
                f.write(json.dumps(doc) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:4])
