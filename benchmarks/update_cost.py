"""What `relm add` costs, stage by stage, and BM25's full rebuild vs its incremental update, side by side.

At several datastore sizes (seeded samples of the shared corpus's documents, by a hash of their id,
and the whole corpus), a base datastore with a faiss index and a BM25 index is built once, untimed:
its vectors come from a deterministic stand-in encoder (hash-seeded Gaussian vectors with the real
encoder's identity and dimension), so that building it takes seconds instead of the half hour the
real encoder needs for the whole corpus. Then, in each repetition, on fresh copies of the base,
the same fixed batch of held-out documents (a seeded sample of ../shared/data/eval) is added twice
with `relm.datastore.update.add_documents`, as `relm add` does, the order alternating:

  incremental  BM25 updated by `update_bm25_index`: the old passages' term ids read from the index,
               only the new passages tokenized, the whole corpus re-scored by bm25s;
  full         BM25 rebuilt from scratch by `build_bm25_index` (what every add did before).

Both adds embed the new passages with the real encoder (all-MiniLM-L6-v2 by default via
`relm.encoders.load_encoder()`, loaded once, untimed; `relm add` also loads it, which is reported
apart), append them to the faiss index, and commit. Timed: the add end to end; inside it, embedding
(the encoder's `encode` calls), building the new documents' datastore apart from embedding (read,
chunk, write), staging and appending to the faiss index, the BM25 update (its own stages from
config.json: load, tokenize, token_cache, index, save) and everything else (merging the arrays, the
commit). The two resulting BM25 indexes are compared file by file: they must be byte-identical.
Medians over repetitions; ratios are taken pair by pair within a repetition.

    python benchmarks/update_cost.py                          # ~10 minutes on 2 cores
    python benchmarks/update_cost.py --fractions 0.1 --runs 1  # a quick look
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import gzip
import hashlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from build_throughput import sample_corpus  # benchmarks/ is on sys.path when run as a script

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SHARED_DATA = Path(os.environ.get("RELM_SHARED_DATA", REPO.parent / "shared" / "data"))
RESULTS = HERE / "results" / "update_cost.json"
BM25_FILES = ("data.csc.index.npy", "indices.csc.index.npy", "indptr.csc.index.npy", "vocab.index.json",
              "params.index.json", "vocab.tokenizer.json", "stopwords.tokenizer.json", "token_ids.npy",
              "token_offsets.npy")
MODES = ("incremental", "full")


class StandInEncoder:
    """Deterministic vectors for the base datastore (a seeded Gaussian per distinct text, as the tests'
    HashEncoder) under the real encoder's identity, so that the real encoder can add to it."""

    def __init__(self, identity: dict[str, Any]):
        self._identity = dict(identity)
        self.name, self.dim = identity["model"], int(identity["dim"])

    def encode(self, texts, *, batch_size=64, normalize=True, show_progress=False):
        from relm.retrieval.synthetic import hash_vectors

        return hash_vectors(texts, self.dim, normalize=normalize)

    def identity(self) -> dict[str, Any]:
        return dict(self._identity)


class TimedEncoder:
    """The real encoder, with the seconds spent in its `encode` calls added up."""

    def __init__(self, encoder):
        self.encoder, self.name, self.dim = encoder, encoder.name, encoder.dim
        self.seconds = 0.0
        self.passages = 0

    def encode(self, texts, **kwargs):
        t0 = time.perf_counter()
        out = self.encoder.encode(texts, **kwargs)
        self.seconds += time.perf_counter() - t0
        self.passages += len(texts)
        return out

    def identity(self):
        return self.encoder.identity()


# -- inputs ----------------------------------------------------------------------------------------
def held_out_batch(eval_dir: Path, n: int, seed: int, out: Path) -> dict[str, Any]:
    """n documents of the held-out set, chosen by a seeded hash of their id, written to one JSONL file."""
    docs = []
    for path in sorted(eval_dir.glob("*.jsonl.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            docs.extend(json.loads(line) for line in f if line.strip())
    key = lambda d: hashlib.blake2b(f"{seed}:{d['id']}".encode(), digest_size=8).digest()  # noqa: E731
    chosen = sorted(docs, key=key)[:n]
    with open(out, "w", encoding="utf-8") as f:
        for d in chosen:
            f.write(json.dumps(d) + "\n")
    return {"documents": len(chosen), "words": sum(len(d["text"].split()) for d in chosen),
            "domains": sorted({d.get("domain", "") for d in chosen})}


def build_base(corpus: Path, out: Path, identity: dict[str, Any], factory: str) -> dict[str, Any]:
    from relm import build_datastore
    from relm.retrieval import AnnConfig, build_ann_index, build_bm25_index

    t0 = time.perf_counter()
    ds = build_datastore([corpus], out, encoder=StandInEncoder(identity))
    t1 = time.perf_counter()
    build_ann_index(ds, "ann", AnnConfig(factory=factory))
    t2 = time.perf_counter()
    bm25 = build_bm25_index(ds, "bm25")
    return {"documents": ds.n_documents, "passages": len(ds), "words": ds.manifest["counts"]["words"],
            "build_seconds": t1 - t0, "ann_build_seconds": t2 - t1, "bm25_build_seconds": time.perf_counter() - t2,
            "bm25_vocabulary": bm25.vocabulary_size, "bm25_tokens": bm25.meta["counts"]["tokens"],
            "bm25_postings": bm25.meta["counts"]["postings"]}


# -- one add ---------------------------------------------------------------------------------------
@contextlib.contextmanager
def timing(seconds: dict[str, float]):
    """Wrap the functions an add calls to add up their wall seconds (and BM25's CPU seconds)."""
    import relm.datastore.build as build_mod
    import relm.datastore.journal as journal_mod
    import relm.retrieval.ann as ann_mod
    import relm.retrieval.bm25 as bm25_mod
    import relm.retrieval.maintenance as maint_mod

    def wrap(module, attr, key, *, cpu=False):
        original = getattr(module, attr)

        def timed(*args, **kwargs):
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                return original(*args, **kwargs)
            finally:
                seconds[key] = seconds.get(key, 0.0) + time.perf_counter() - t0
                if cpu:
                    seconds[key + "_cpu"] = seconds.get(key + "_cpu", 0.0) + time.process_time() - c0

        setattr(module, attr, timed)
        return module, attr, original

    patched = [
        wrap(build_mod, "build_datastore", "build_new"),
        wrap(ann_mod, "stage_copy", "faiss_stage_copy"),
        wrap(ann_mod, "add_new_vectors", "faiss_append"),
        wrap(bm25_mod, "update_bm25_index", "bm25", cpu=True),
        wrap(maint_mod, "update_indexes", "update_indexes"),
        wrap(journal_mod, "commit_stage", "commit"),
    ]
    try:
        yield
    finally:
        for module, attr, original in reversed(patched):
            setattr(module, attr, original)


@contextlib.contextmanager
def bm25_full_rebuild():
    """`update_bm25_index` replaced by what every add did before: a rebuild from scratch."""
    import relm.retrieval.bm25 as bm25_mod

    original = bm25_mod.update_bm25_index

    def rebuild(view, name, *, source=None, show_progress=None):
        saved = bm25_mod.read_index_config(source if source is not None else view, name, check_fresh=False)
        return bm25_mod.build_bm25_index(view, name, bm25_mod.BM25Config.from_dict(bm25_mod.build_config(saved)),
                                         overwrite=True, show_progress=show_progress)

    bm25_mod.update_bm25_index = rebuild
    try:
        yield
    finally:
        bm25_mod.update_bm25_index = original


def one_add(base: Path, work: Path, new: Path, encoder, mode: str) -> dict[str, Any]:
    from relm import Datastore
    from relm.datastore.update import add_documents

    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(base, work)  # untimed
    ds = Datastore.open(work)
    n_old = len(ds)
    timed_encoder = TimedEncoder(encoder)
    seconds: dict[str, float] = {}
    gc.collect()
    # the rebuild first, so that timing() wraps it
    with (bm25_full_rebuild() if mode == "full" else contextlib.nullcontext()), timing(seconds):
        t0 = time.perf_counter()
        ds = add_documents(ds, [new], encoder=timed_encoder, show_progress=False)
        seconds["add"] = time.perf_counter() - t0
    meta = json.loads((work / "indexes" / "bm25" / "config.json").read_text())
    assert ("load" in meta["stage_seconds"]) == (mode == "incremental"), f"{mode}: the wrong BM25 path ran"
    seconds["embed"] = timed_encoder.seconds
    seconds["build_new_other"] = seconds["build_new"] - timed_encoder.seconds
    seconds["faiss"] = seconds["faiss_stage_copy"] + seconds["faiss_append"]
    seconds["rest"] = seconds["add"] - seconds["bm25"]
    # merging the arrays, the commit, the lock, recovery and id checks, reopening
    seconds["other"] = seconds["add"] - seconds["build_new"] - seconds["faiss"] - seconds["bm25"]
    return {"mode": mode, "passages_before": n_old, "passages_added": len(ds) - n_old,
            "embedded_passages": timed_encoder.passages, "seconds": seconds,
            "bm25_stage_seconds": meta["stage_seconds"]}


def identical_bm25(a: Path, b: Path) -> bool:
    return all((a / "indexes" / "bm25" / f).read_bytes() == (b / "indexes" / "bm25" / f).read_bytes()
               for f in BM25_FILES)


# -- summary ---------------------------------------------------------------------------------------
def summarize(label: str, base: dict[str, Any], runs: list[dict[str, dict]], identical: list[bool]) -> dict:
    med = statistics.median

    def m(mode: str, key: str) -> float:
        return med(r[mode]["seconds"][key] for r in runs)

    def stage(mode: str, key: str) -> float:
        return med(r[mode]["bm25_stage_seconds"].get(key, 0.0) for r in runs)

    out = {"size": label, **base, "passages_added": runs[0]["incremental"]["passages_added"], "runs": len(runs),
           "bm25_identical": all(identical)}
    for mode in MODES:
        out[mode] = {
            "seconds": {k: m(mode, k) for k in runs[0][mode]["seconds"]},
            "bm25_stage_seconds": {k: stage(mode, k) for k in
                                   ("load", "tokenize", "token_cache", "index", "save")},
            # BM25 over the rest of the same add, pair by pair in time
            "bm25_over_rest": med(r[mode]["seconds"]["bm25"] / r[mode]["seconds"]["rest"] for r in runs),
            "bm25_share_of_add": med(r[mode]["seconds"]["bm25"] / r[mode]["seconds"]["add"] for r in runs),
        }
    # what does not depend on the BM25 path: medians over every add of both paths
    out["add_components"] = {k: med(r[mode]["seconds"][k] for r in runs for mode in MODES)
                             for k in ("embed", "build_new_other", "faiss", "other")}
    out["bm25_speedup"] = med(r["full"]["seconds"]["bm25"] / r["incremental"]["seconds"]["bm25"] for r in runs)
    out["bm25_speedup_cpu"] = med(r["full"]["seconds"]["bm25_cpu"] / r["incremental"]["seconds"]["bm25_cpu"]
                                  for r in runs)
    out["add_speedup"] = med(r["full"]["seconds"]["add"] / r["incremental"]["seconds"]["add"] for r in runs)
    out["runs_detail"] = runs
    return out


def table(rows: list[dict], info: dict[str, Any]) -> str:
    lines = [
        "| datastore | passages | added | add, s: full / incr. | embed (real encoder) | build new, rest "
        "| faiss stage + append | commit, merge, rest | BM25 full | BM25 incr. | BM25 speedup wall (CPU) "
        "| BM25 / rest of add: full / incr. | load avg |",
        "|" + "---|" * 13,
    ]
    for r in rows:
        f, i, c = r["full"]["seconds"], r["incremental"]["seconds"], r["add_components"]
        lines.append(
            f"| {r['size']} | {r['passages']:,} | {r['passages_added']:,} | {f['add']:.1f} / {i['add']:.1f} "
            f"| {c['embed']:.1f} | {c['build_new_other']:.2f} | {c['faiss']:.2f} | {c['other']:.2f} "
            f"| {f['bm25']:.2f} | {i['bm25']:.2f} | **{r['bm25_speedup']:.2f}x** ({r['bm25_speedup_cpu']:.2f}x) "
            f"| {r['full']['bm25_over_rest']:.1%} / {r['incremental']['bm25_over_rest']:.1%} "
            f"| {r['load_average_start']:.1f}-{r['load_average_end']:.1f} |"
        )
    lines += ["", "| datastore | BM25 path | load | tokenize | token_cache | index (bm25s scoring) | save | total |",
              "|" + "---|" * 8]
    for r in rows:
        for mode in MODES:
            s = r[mode]["bm25_stage_seconds"]
            lines.append(f"| {r['size']} | {mode} | {s['load']:.2f} | {s['tokenize']:.2f} | {s['token_cache']:.2f} "
                         f"| {s['index']:.2f} | {s['save']:.2f} | {r[mode]['seconds']['bm25']:.2f} |")
    lines += [
        "",
        f"Added: {info['batch']['documents']} held-out documents ({info['batch']['words']:,} words, "
        f"{rows[0]['passages_added']} passages) from {info['eval']}, embedded by {info['encoder']} "
        f"(its load, {info['encoder_load_seconds']:.1f} s, is not in the add); faiss index `{info['factory']}`; "
        f"medians of {info['runs']} repetitions, each adding the batch once with BM25 updated incrementally and "
        f"once rebuilt in full, alternating the order, on {info['cpus']} CPUs shared with other jobs (1-minute "
        f"load average at the start and end of each size in the last column). 'add' is `add_documents` end to end; 'BM25' is the "
        f"BM25 step inside it (incl. reading the old index and writing config.json); 'BM25 / rest of add' is "
        f"that step over everything else in the same add; the columns from 'embed' to 'commit' do not depend "
        f"on the BM25 path and are medians over the adds of both. BM25 indexes byte-identical between the two paths: "
        f"{all(r['bm25_identical'] for r in rows)}.",
    ]
    return "\n".join(lines)


def shown(path: Path) -> str:
    return os.path.relpath(path.resolve(), REPO)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", type=Path, default=SHARED_DATA / "corpus")
    p.add_argument("--eval", type=Path, default=SHARED_DATA / "eval", help="held-out documents to add")
    p.add_argument("--fractions", default="0.1,0.3,1.0", help="datastore sizes, as fractions of the corpus's documents")
    p.add_argument("--add-docs", type=int, default=50)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--factory", default="hnsw", help="the faiss index appended to (flat, hnsw, ...)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    for d in (args.corpus, args.eval):
        if not d.is_dir():
            sys.exit(f"{d} not found; pass --corpus/--eval or set RELM_SHARED_DATA")
    import logging

    logging.getLogger("bm25s").setLevel(logging.WARNING)
    from relm.encoders import load_encoder

    t0 = time.perf_counter()
    encoder = load_encoder()
    load_seconds = time.perf_counter() - t0
    identity = encoder.identity()
    load = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory(prefix="relm-update-cost-") as tmp:
        tmp = Path(tmp)
        new = tmp / "new.jsonl"
        batch = held_out_batch(args.eval, args.add_docs, args.seed, new)
        encoder.encode(["warm up the encoder"] * 8)
        for fraction in (float(x) for x in args.fractions.split(",")):
            label = "full corpus" if fraction >= 1 else f"{fraction:.0%} sample"
            corpus = args.corpus if fraction >= 1 else sample_corpus(args.corpus, fraction, tmp / f"corpus-{fraction}",
                                                                     seed=args.seed)
            base = tmp / "base"
            shutil.rmtree(base, ignore_errors=True)
            print(f"[{label}] building the base datastore ...", file=sys.stderr, flush=True)
            facts = build_base(corpus, base, identity, args.factory)
            print(f"[{label}] {facts['passages']:,} passages; BM25 build {facts['bm25_build_seconds']:.2f} s",
                  file=sys.stderr, flush=True)
            runs, identical = [], []
            size_load = os.getloadavg()[0]
            for r in range(args.runs):
                order = MODES if r % 2 == 0 else MODES[::-1]
                run = {mode: one_add(base, tmp / f"work-{mode}", new, encoder, mode) for mode in order}
                identical.append(identical_bm25(tmp / "work-incremental", tmp / "work-full"))
                runs.append(run)
                print(f"[{label}] run {r + 1}/{args.runs}: " + ", ".join(
                    f"{m} add {run[m]['seconds']['add']:.1f} s (BM25 {run[m]['seconds']['bm25']:.2f} s)"
                    for m in order) + f"; identical {identical[-1]}", file=sys.stderr, flush=True)
            rows.append({**summarize(label, facts, runs, identical), "load_average_start": size_load,
                         "load_average_end": os.getloadavg()[0]})
            for d in ("work-incremental", "work-full", "base"):
                shutil.rmtree(tmp / d, ignore_errors=True)
    import platform
    from importlib.metadata import version

    import torch

    info = {
        "benchmark": "update_cost", "date": time.strftime("%Y-%m-%d"), "corpus": shown(args.corpus),
        "eval": shown(args.eval), "batch": batch, "encoder": f"{identity['model']} (max_seq_length "
        f"{identity['max_seq_length']})", "encoder_load_seconds": load_seconds, "factory": args.factory,
        "runs": args.runs, "seed": args.seed, "cpus": os.cpu_count(), "load_average": load,
        "machine": {"torch_threads": torch.get_num_threads(), "python": platform.python_version()},
        "library": {"bm25s": version("bm25s"), "faiss": version("faiss-cpu")},
    }
    text = table(rows, info)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({**info, "rows": rows, "table": text}, indent=2) + "\n")
    print(f"saved {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
