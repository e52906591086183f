"""The datastore directory: file names, format version and manifest checks.

```
DS/
  manifest.json            format, version, encoder, chunker, tokenizer, counts, shards, inputs, build stats
  stats.json               per-stage timings and throughput of the last build (not part of the identity)
  passages/text.bin        UTF-8 text of every passage, back to back
  passages/offsets.npy     uint64 (n+1,): passage i is text.bin[offsets[i]:offsets[i+1]]
  passages/doc_index.npy   uint32 (n,): the document each passage belongs to
  docs/records.jsonl       one JSON object per document: id, domain, title, timestamp, source, metadata
  docs/offsets.npy         uint64 (n_docs+1,): byte offsets of the records, for random access
  docs/passages.npy        uint64 (n_docs+1,): document j owns passages [passages[j], passages[j+1])
  docs/domain.npy          uint16 (n_docs,): index into manifest["domains"]
  docs/timestamp.npy       int64 (n_docs,): seconds since the epoch, or -2**63 when unknown
  tokens/ids.npy           uint16|uint32 (n_tokens,): token mode only
  tokens/offsets.npy       uint64 (n+1,): chunk i is ids[offsets[i]:offsets[i+1]]
  embeddings/shard-00000.npy  float16 (rows, dim), opened memory-mapped
  .build/                  staging of an unfinished build (removed when it finishes)
```

A build writes `manifest.json` last: a directory without one is not a datastore.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..artifacts import read_json
from ..errors import DatastoreError

FORMAT = "relm-datastore"
FORMAT_VERSION = 1

MANIFEST = "manifest.json"
STATS = "stats.json"
STAGING = ".build"

PASSAGE_TEXT = "passages/text.bin"
PASSAGE_OFFSETS = "passages/offsets.npy"
PASSAGE_DOC = "passages/doc_index.npy"
DOC_RECORDS = "docs/records.jsonl"
DOC_OFFSETS = "docs/offsets.npy"
DOC_PASSAGES = "docs/passages.npy"
DOC_DOMAIN = "docs/domain.npy"
DOC_TIMESTAMP = "docs/timestamp.npy"
TOKEN_IDS = "tokens/ids.npy"
TOKEN_OFFSETS = "tokens/offsets.npy"
EMBEDDINGS_DIR = "embeddings"
# manifest key of a datastore written with its text but not yet its vectors: a part of a build split into
# parts (`datastore.build.build_in_parts`), whose vectors are encoded after the parts are assembled
DEFERRED = "vectors_deferred"


def shard_name(i: int) -> str:
    return f"shard-{i:05d}"


def embedding_shard(i: int) -> str:
    return f"{EMBEDDINGS_DIR}/{shard_name(i)}.npy"


def read_manifest(root: str | Path) -> dict[str, Any]:
    """The manifest of a finished datastore, checked for format and version."""
    root = Path(root)
    path = root / MANIFEST
    if not root.exists():
        raise DatastoreError(f"{root}: no such datastore directory; build one with `relm build INPUT --out {root}`")
    if not path.exists():
        if (root / STAGING).exists():
            raise DatastoreError(
                f"{root}: the build has not finished (no manifest.json); rerun the same `relm build` command to resume"
            )
        raise DatastoreError(f"{root}: not a relm datastore (no manifest.json)")
    try:
        manifest = read_json(path)
    except (ValueError, OSError) as e:
        raise DatastoreError(f"{path}: unreadable manifest ({e}); the datastore is damaged") from e
    check_manifest(manifest, path)
    for key in ("counts", "embeddings", "encoder", "domains"):
        if not isinstance(manifest.get(key), dict | list):
            raise DatastoreError(f"{path}: the manifest has no valid {key!r}; the datastore is damaged")
    return manifest


def check_manifest(manifest: dict[str, Any], path: str | Path) -> None:
    if not isinstance(manifest, dict):
        raise DatastoreError(f"{path}: not a relm datastore manifest (a JSON {type(manifest).__name__}, not an object)")
    if manifest.get("format") != FORMAT:
        raise DatastoreError(f"{path}: not a relm datastore manifest (format is {manifest.get('format')!r})")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise DatastoreError(
            f"{path}: datastore format version {version!r} is not supported by this relm "
            f"(which reads version {FORMAT_VERSION}); "
            + ("upgrade relm" if isinstance(version, int) and version > FORMAT_VERSION else "rebuild the datastore")
        )
