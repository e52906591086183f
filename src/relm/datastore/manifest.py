"""The manifest: a datastore's typed description, the last file every writer writes.

`Manifest` is what build, add, compact and the synthetic writer produce, and what `assemble` writes;
`Manifest.to_json()` gives the `manifest.json` object (deterministic: equal manifests are equal bytes)
and `Manifest.from_json` reads one back, refusing another format, an unknown version or a malformed
field with one line naming it. A `Datastore` keeps the JSON object as `ds.manifest` and the typed one
as `ds.meta`.

```
format, format_version      "relm-datastore", 1
relm_version                the relm that wrote it
kind                        "passages" (word passages) or "tokens" (token chunks)
generation, revision        passage ids/contents changed (add, compact) / anything changed (+ delete)
encoder                     model, backend (torch, onnx, onnx-int8), quantization, runtime, dim, pooling,
                            max_seq_length, fingerprint (of the source model), normalize, probe (compat.py)
chunker, tokens             how text was cut; token ids' tokenizer, dtype and count (token mode)
counts                      documents, passages, words, tokens, text_bytes, shards
embeddings                  dtype float16, dim, shards [{file, start, rows}] covering [0, passages)
passages, docs              the array files (layout.py), with their dtypes
domains                     [{name, documents}]: domain code i is domains[i]
inputs, build               what it was built from (plan: config + input hashes) and read stats
updates, deleted            the update log; tombstone counts
```
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from ..errors import DatastoreError
from ..version import __version__
from . import layout as L

KINDS = ("passages", "tokens")
ARRAYS = {  # file -> dtype(s), for the manifest's "passages" and "docs" maps and the open-time checks
    "passages": {"text": L.PASSAGE_TEXT, "offsets": L.PASSAGE_OFFSETS, "doc_index": L.PASSAGE_DOC},
    "docs": {"records": L.DOC_RECORDS, "offsets": L.DOC_OFFSETS, "passages": L.DOC_PASSAGES,
             "domain": L.DOC_DOMAIN, "timestamp": L.DOC_TIMESTAMP},
}


@dataclass(frozen=True)
class EmbeddingShard:
    file: str
    start: int
    rows: int


@dataclass(frozen=True)
class Counts:
    documents: int
    passages: int
    words: int
    tokens: int | None
    text_bytes: int
    shards: int


@dataclass(frozen=True)
class Manifest:
    kind: str
    encoder: dict[str, Any]
    chunker: dict[str, Any] | None
    tokens: dict[str, Any] | None
    counts: Counts
    dim: int
    shards: tuple[EmbeddingShard, ...]
    domains: tuple[dict[str, Any], ...]
    inputs: tuple[dict[str, Any], ...]
    build: dict[str, Any]
    generation: int = 0
    revision: int | None = None  # absent until the first update
    updates: tuple[dict[str, Any], ...] | None = None
    deleted: dict[str, Any] | None = None
    relm_version: str = __version__
    extra: dict[str, Any] = field(default_factory=dict)  # fields a newer minor relm added: kept as they are

    # -- JSON ---------------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "format": L.FORMAT,
            "format_version": L.FORMAT_VERSION,
            "relm_version": self.relm_version,
            "kind": self.kind,
            "generation": self.generation,
            "encoder": self.encoder,
            "chunker": self.chunker,
            "tokens": self.tokens,
            "counts": dict(self.counts.__dict__),
            "embeddings": {"dtype": "float16", "dim": self.dim,
                           "shards": [dict(s.__dict__) for s in self.shards]},
            "passages": dict(ARRAYS["passages"]),
            "docs": dict(ARRAYS["docs"]),
            "domains": [dict(d) for d in self.domains],
            "inputs": [dict(i) for i in self.inputs],
            "build": self.build,
            **self.extra,
        }
        for key in ("revision", "updates", "deleted"):
            value = getattr(self, key)
            if value is not None:
                out[key] = list(value) if key == "updates" else value
        return out

    @classmethod
    def from_json(cls, d: Any, where: str = L.MANIFEST) -> Manifest:
        L.check_manifest(d, where)

        def bad(what: str) -> DatastoreError:
            return DatastoreError(f"{where}: {what}; the datastore is damaged")

        def count(v: Any, name: str, *, optional: bool = False) -> int | None:
            if v is None and optional:
                return None
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise bad(f"{name} is {v!r}, not a count")
            return v

        if d.get("kind") not in KINDS:
            raise bad(f"kind is {d.get('kind')!r}, not one of {KINDS}")
        c = d.get("counts")
        if not isinstance(c, dict):
            raise bad("counts is not an object")
        counts = Counts(**{k: count(c.get(k), f"counts.{k}", optional=k == "tokens") for k in
                           ("documents", "passages", "words", "tokens", "text_bytes", "shards")})
        emb = d.get("embeddings")
        if not isinstance(emb, dict) or not isinstance(emb.get("shards"), list):
            raise bad("embeddings.shards is not a list")
        shards = []
        for i, s in enumerate(emb["shards"]):
            if not isinstance(s, dict) or not isinstance(s.get("file"), str):
                raise bad(f"embedding shard {i} is {s!r}")
            shards.append(EmbeddingShard(s["file"], count(s.get("start"), f"shard {i} start"),
                                         count(s.get("rows"), f"shard {i} rows")))
        for key, kind in (("encoder", dict), ("domains", list), ("inputs", list), ("build", dict)):
            if not isinstance(d.get(key), kind):
                raise bad(f"{key} is not a JSON {kind.__name__}")
        known = {"format", "format_version", "relm_version", "kind", "generation", "encoder", "chunker", "tokens",
                 "counts", "embeddings", "passages", "docs", "domains", "inputs", "build", "revision", "updates",
                 "deleted"}
        return cls(
            kind=d["kind"], encoder=d["encoder"], chunker=d.get("chunker"), tokens=d.get("tokens"), counts=counts,
            dim=count(emb.get("dim"), "embeddings.dim"), shards=tuple(shards), domains=tuple(d["domains"]),
            inputs=tuple(d["inputs"]), build=d["build"], generation=count(d.get("generation", 0), "generation"),
            revision=count(d.get("revision"), "revision", optional=True),
            updates=tuple(d["updates"]) if isinstance(d.get("updates"), list) else None,
            deleted=d.get("deleted"), relm_version=str(d.get("relm_version", "")),
            extra={k: v for k, v in d.items() if k not in known},
        )

    # -- changes ------------------------------------------------------------------------------------
    def bump(self, op: dict[str, Any], *, new_generation: bool, **changes: Any) -> Manifest:
        """The manifest after an update `op`: revision + 1 (and generation + 1 when passages changed)."""
        return replace(
            self,
            revision=(self.revision or 0) + 1,
            generation=self.generation + (1 if new_generation else 0),
            updates=(*(self.updates or ()), op),
            **changes,
        )

    @property
    def domain_names(self) -> list[str]:
        return [dm["name"] for dm in self.domains]
