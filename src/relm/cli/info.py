"""`relm info DS`: what a datastore holds and how it was built."""

from __future__ import annotations

import json

from ..corpus.documents import format_timestamp
from .common import HelpFormatter


def register(sub) -> None:
    p = sub.add_parser("info", help="describe a datastore", formatter_class=HelpFormatter)
    p.add_argument("datastore", metavar="DS")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..datastore import Datastore
    from ..retrieval.registry import build_config

    ds = Datastore.open(args.datastore)
    info = ds.info()
    if args.json:
        print(json.dumps(info, indent=2, ensure_ascii=False))
        return 0
    c, enc, ch = info["counts"], info["encoder"], info["chunker"]
    print(f"datastore   {info['path']}  (format v{info['format_version']}, {info['kind']})")
    print(f"documents   {c['documents']:,}")
    print(f"passages    {c['passages']:,} in {c['shards']} shard(s)")
    print(f"words       {c['words']:,}" + (f"   tokens {c['tokens']:,}" if c["tokens"] else ""))
    print("chunker     " + ", ".join(f"{k}={v}" for k, v in ch.items()))
    if info["tokens"]:
        t = info["tokens"]["tokenizer"]
        print(f"tokenizer   {t['name']} (vocab {t['vocab_size']:,}, ids {t['id_dtype']})")
    from ..encoders.compat import recorded_backend

    print(f"encoder     {enc['model']} (dim {enc['dim']}, {enc['pooling']} pooling, "
          f"max_seq_length {enc['max_seq_length']}, normalize={enc['normalize']}, {enc['fingerprint']}; "
          f"backend {recorded_backend(enc)})")
    print("domains     " + ", ".join(f"{d['name']} ({d['documents']:,} docs)" for d in info["domains"]))
    print(f"disk        {info['disk_bytes'] / 2**20:,.1f} MiB; text {c['text_bytes'] / 2**20:,.1f} MiB; "
          f"{info['bytes_per_passage_beyond_text']:.1f} bytes/passage beyond the text")
    if info["skipped"]:
        print("skipped     " + ", ".join(f"{k}: {v}" for k, v in info["skipped"].items()))
    ts = ds.doc_timestamp[ds.doc_timestamp != -(2**63)] if ds.n_documents else []
    if len(ts):
        print(f"timestamps  {format_timestamp(int(ts.min()))} .. {format_timestamp(int(ts.max()))} "
              f"({len(ts):,} documents)")
    for idx in info["indexes"]:
        what = idx.get("factory") or (build_config(idx).get("by") if idx["type"] == "sharded" else idx["type"])
        print(f"index       {idx['name']} ({idx['type']}: {what}; built at {idx['datastore']['passages']:,} passages)")
    if ds.manifest.get("deleted"):
        d = ds.manifest["deleted"]
        print(f"deleted     {d['documents']:,} documents ({d['passages']:,} passages); `relm compact` drops them")
    if info["encoder_input"]:
        e = info["encoder_input"]
        print(f"truncated   {e['truncated']:,} of {e['passages']:,} passages embedded "
              f"({e['truncated'] / max(e['passages'], 1):.1%}) were longer than the encoder's {e['max_length']} "
              "tokens and cut")
    if info["stats"]:
        s = info["stats"]
        print(f"last build  {s['seconds'].get('total', 0):.1f}s, "
              f"{s['throughput']['passages_per_s']:.1f} passages/s, peak RSS {s['peak_rss_mb']:.0f} MB")
    return 0
