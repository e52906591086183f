"""Write relm's int8 calibration texts (`src/relm/encoders/calibration.jsonl`) from the shared corpus.

Static int8 quantization (`--encoder-backend openvino-int8`) sets each activation's int8 range from
what the encoder sees on a calibration set. relm ships a fixed set, so that the quantized encoder is a
function of the model alone (one per model fingerprint, like the other backends' files) and a query
encoder on another machine is the same. The set mixes prose and technical text from the two parts of
the shared corpus whose licenses allow redistribution: Project Gutenberg books (public domain in the
USA) and the Python 3.11 documentation (PSF License; notice in the file's header line). Passages are
cut as `relm build` cuts them (256 words at most), one seeded sample of documents per domain.

    python scripts/make_calibration_texts.py [--corpus ../shared/data/corpus] [--per-domain 48]
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
from pathlib import Path

from relm.corpus.chunking import word_passage_bounds, word_spans

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "src" / "relm" / "encoders" / "calibration.jsonl"
SOURCES = {
    "books": "Project Gutenberg texts, public domain in the USA",
    "pydocs": "Python 3.11 documentation, Copyright (c) 2001-2023 Python Software Foundation; PSF License Version 2",
}


def passages(path: Path, n: int, seed: int) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        docs = [json.loads(line) for line in f]
    rng = random.Random(seed)
    rng.shuffle(docs)
    out = []
    for doc in docs:
        text = doc["text"]
        spans = word_spans(text)
        if len(spans) < 64:
            continue
        bounds = word_passage_bounds(len(spans), 256, 32)
        a, b = bounds[rng.randrange(len(bounds))]  # one passage per document: n documents, n styles
        out.append({"source": doc["id"], "text": text[spans[a][0]:spans[b - 1][1]]})
        if len(out) == n:
            break
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, default=ROOT.parent / "shared" / "data" / "corpus")
    ap.add_argument("--per-domain", type=int, default=48)
    args = ap.parse_args()
    rows = []
    for domain in SOURCES:
        rows += passages(args.corpus / f"{domain}.jsonl.gz", args.per_domain, seed=0)
    with OUT.open("w", encoding="utf-8") as f:
        f.write(json.dumps({"about": __doc__.split("\n\n")[1].replace("\n", " "), "sources": SOURCES}) + "\n")
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows)} passages ({OUT.stat().st_size:,} bytes) to {OUT}")


if __name__ == "__main__":
    main()
