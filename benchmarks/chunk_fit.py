"""How many passages the encoder truncates: the old word chunker vs the token-budgeted one, per domain.

Reads up to --docs documents of each domain of the shared corpus (../shared/data/corpus) with relm's
reader, cuts them with the build's own chunker twice (`--max-tokens none`: 256 words; `--max-tokens
auto`: 256 words and at most 254 all-MiniLM-L6-v2 tokens), and counts passages whose encoder input,
special tokens included, is longer than the encoder's 256 tokens: those the encoder cuts. Tokenizing
only (the encoder's tokenizer.json), no encoding. `--titles` prepends each document's title as
`relm build --title-field title` does. Writes benchmarks/results/chunk_fit.json.

    python benchmarks/chunk_fit.py                  # ~1 minute
    python benchmarks/chunk_fit.py --titles
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from relm.config import ChunkConfig, ReaderConfig
from relm.corpus.chunking import chunk_words
from relm.corpus.documents import with_title
from relm.corpus.readers import read_documents, resolve_inputs
from relm.encoders import resolve_model_path
from relm.encoders.tokens import EncoderTokens, text_budget_after_title

HERE = Path(__file__).resolve().parent


def passages(doc, tokens: EncoderTokens, budget: int | None, titles: bool, c: ChunkConfig) -> list[str]:
    """The encoder inputs of one document's passages, cut as `relm build` cuts them."""
    title = doc.title if titles else None
    if budget is None:
        spans = chunk_words(doc.text, c.max_words, c.min_words)
    else:
        if title and title.strip():
            budget = text_budget_after_title(budget, int(tokens.count([title])[0]))
        spans = chunk_words(doc.text, c.max_words, c.min_words, word_tokens=tokens.word_tokens(doc.text),
                            max_tokens=budget)
    return [with_title(title, doc.text[a:b]) for a, b, _ in spans]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default=str(HERE.parent.parent / "shared" / "data" / "corpus"))
    ap.add_argument("--docs", type=int, default=3000, help="documents per domain (at most)")
    ap.add_argument("--titles", action="store_true", help="prepend titles (relm build --title-field title)")
    ap.add_argument("--out", default=str(HERE / "results" / "chunk_fit.json"))
    args = ap.parse_args()

    from tokenizers import Tokenizer

    tokens = EncoderTokens(Tokenizer.from_file(str(resolve_model_path("all-MiniLM-L6-v2") / "tokenizer.json")),
                           max_length=256, n_special=2)
    c = ChunkConfig()
    rows = []
    for path in sorted(Path(args.corpus).glob("*.jsonl*")):
        docs = []
        for doc in read_documents(resolve_inputs([path], ReaderConfig()), ReaderConfig()):
            docs.append(doc)
            if len(docs) == args.docs:
                break
        row = {"domain": path.name.split(".")[0], "documents": len(docs)}
        for name, budget in (("old", None), ("new", tokens.text_budget)):
            inputs = [p for d in docs for p in passages(d, tokens, budget, args.titles, c)]
            n_tok = tokens.count(inputs) + tokens.n_special
            row[name] = {"passages": len(inputs), "truncated": int(np.sum(n_tok > tokens.max_length)),
                         "truncated_fraction": float(np.mean(n_tok > tokens.max_length)),
                         "median_tokens": float(np.median(n_tok)),
                         "tokens_cut": int(np.sum(np.maximum(n_tok - tokens.max_length, 0))),
                         "tokens": int(np.sum(n_tok))}
        rows.append(row)
        o, n = row["old"], row["new"]
        print(f"{row['domain']:8s} {len(docs):5d} docs  old: {o['passages']:6d} passages, "
              f"{o['truncated_fraction']:6.1%} truncated (median {o['median_tokens']:.0f} tokens, "
              f"{o['tokens_cut'] / o['tokens']:.1%} of tokens cut)  new: {n['passages']:6d} passages, "
              f"{n['truncated_fraction']:6.1%} truncated (median {n['median_tokens']:.0f})")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    prev = json.loads(out.read_text()) if out.exists() else {}
    prev["titles" if args.titles else "no_titles"] = rows
    out.write_text(json.dumps(prev, indent=2) + "\n")


if __name__ == "__main__":
    main()
