"""A multiple-choice version of SQuAD v1.1 dev for `relm qa --choices`: each question's first gold answer
and 3 distractors drawn (seeded) from the other questions' first gold answers in the same article (same
topic, so the passages matter), in a seeded order. Writes JSONL with id, question, choices, answer.

    python benchmarks/squad_mc.py /tmp/squad-mc.jsonl
    relm qa /work/beir/squad /tmp/squad-mc.jsonl --choices -k 3 --shots 3 --max-questions 30 --threads 1 \\
        --retriever bm25 --index bm25-k1.5-b0.75
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SQUAD = Path(os.environ.get("RELM_SHARED_DATA", HERE.parents[1] / "shared" / "data")) / "external" / \
    "squad-v1.1-dev" / "dev-v1.1.json.gz"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    data = json.load(gzip.open(SQUAD))["data"]
    rng = np.random.default_rng(args.seed)
    n = 0
    with open(args.out, "w", encoding="utf-8") as f:
        for article in data:
            qas = [(qa["id"], qa["question"], qa["answers"][0]["text"]) for p in article["paragraphs"] for qa in p["qas"]]
            golds = sorted({a for _, _, a in qas})
            for qid, question, answer in qas:
                others = [g for g in golds if g.lower() != answer.lower()]
                choices = [str(c) for c in rng.choice(others, 3, replace=False)] + [answer]
                order = rng.permutation(4)
                f.write(json.dumps({"id": qid, "question": question, "choices": [choices[i] for i in order],
                                    "answer": int(np.flatnonzero(order == 3)[0])}, ensure_ascii=False) + "\n")
                n += 1
    print(f"wrote {n} questions to {args.out}")


if __name__ == "__main__":
    main()
