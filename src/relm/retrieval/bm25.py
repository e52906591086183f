"""BM25 over a datastore's passages, with bm25s underneath.

bm25s precomputes, at build time, the BM25 contribution of every (term, passage)
pair and stores them as a sparse CSC matrix (one column per term), so a query
costs one column sum per query term plus a top-k over the N passages.
Scoring (the Lucene variant by default; Kamphuis et al., ECIR 2020):

    score(q, d) = sum_{t in q} idf(t) * tf(t, d) / (tf(t, d) + k1 * (1 - b + b * |d| / avgdl))
    idf(t)      = ln(1 + (N - df(t) + 0.5) / (df(t) + 0.5))

summed over the query's tokens with their repetitions, as bm25s does.

`DS/indexes/NAME/` holds bm25s's own save format (`data/indices/indptr.csc.index.npy`,
`vocab.index.json`, `params.index.json`), the bm25s tokenizer's vocabulary and
stopwords (`vocab.tokenizer.json`, `stopwords.tokenizer.json`) so that queries
are tokenized exactly as the passages were, every passage's term ids
(`token_ids.npy`, uint32, passage after passage, and `token_offsets.npy`, uint64,
N + 1 offsets into it), and relm's `config.json`, written last.

After `relm add` (`update_bm25_index`), every stored score changes: idf depends on N
and each term's document frequency, the length norm on the average passage length,
so the postings are recomputed by bm25s for the whole corpus. What is saved is the
tokenization, the larger part of a build: the old passages' term ids come from
`token_ids.npy`, only the new passages are tokenized, continuing the saved vocabulary
(new terms get the next ids in first-seen order, as a rebuild in passage order gives
them), so the index is identical to a full rebuild, array for array. An index
without the term ids (built before they were saved), built by other bm25s or
PyStemmer versions, or whose datastore was not only appended to, is rebuilt in full.
Costs: benchmarks/update_cost.py.

A hit is a passage with a positive score: one sharing a query term of positive
idf. Passages that match nothing, and passages outside `allowed`, come back as
padding (-inf, -1), never as zero-score filler. Every bm25s call lives in this module.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..artifacts import load_npy, save_npy_atomic
from ..config import _from_dict
from ..errors import ConfigError, DatastoreError
from ..progress import progress
from .indexes import (
    SearchResult,
    check_k,
    check_name,
    check_probe,
    datastore_state,
    index_dir,
    index_transaction,
    is_staged,
    prepare_index_dir,
    probe_ids,
    read_index_config,
    write_index_config,
)
from .options import check_queries
from .registry import build_config
from .topk import PAD_ID, topk

if TYPE_CHECKING:
    import bm25s
    from bm25s.tokenization import Tokenizer

log = logging.getLogger(__name__)

INDEX_TYPE = "bm25"
# Variants whose scores are >= 0 and 0 exactly when no query term of positive idf
# occurs in the passage, so "score > 0" means "matched" and a zero weight hides a
# passage. BM25L and BM25+ add a non-occurrence score to *every* passage, which
# would make every passage a hit; they are not offered.
METHODS = ("lucene", "robertson", "atire")
# Passages read from the datastore and tokenized at a time: the text of one block
# is all the passage text ever held in memory (a few MiB at 256 words a passage).
BLOCK_PASSAGES = 8192
# bm25s stores passage ids as int32.
MAX_PASSAGES = 2**31 - 1
# every passage's term ids (uint32, concatenated) and the N + 1 offsets into them (uint64)
TOKEN_IDS = "token_ids.npy"
TOKEN_OFFSETS = "token_offsets.npy"


@dataclass(frozen=True)
class BM25Config:
    """How passages and queries are tokenized and scored; saved in config.json and rebuilt from it."""

    method: str = "lucene"
    k1: float = 1.5
    b: float = 0.75
    # a bm25s stopword list name ("en", "de", ...), or None to keep every word
    stopwords: str | None = "en"
    # a PyStemmer algorithm ("english", "porter", ...), or None for no stemming
    stemmer: str | None = "english"
    lowercase: bool = True

    def __post_init__(self):
        if self.method not in METHODS:
            raise ConfigError(f"BM25 method {self.method!r} is not supported; choose from {list(METHODS)}")
        if not isinstance(self.k1, int | float) or isinstance(self.k1, bool) or self.k1 < 0:
            raise ConfigError(f"BM25 k1 must be a number >= 0, got {self.k1!r}")
        if not isinstance(self.b, int | float) or isinstance(self.b, bool) or not 0 <= self.b <= 1:
            raise ConfigError(f"BM25 b must be a number in [0, 1], got {self.b!r}")
        for field in ("stopwords", "stemmer"):
            value = getattr(self, field)
            if value is not None and (not isinstance(value, str) or not value):
                raise ConfigError(f"BM25 {field} must be a name or None, got {value!r}")
        if not isinstance(self.lowercase, bool):
            raise ConfigError(f"BM25 lowercase must be True or False, got {self.lowercase!r}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BM25Config:
        return _from_dict(cls, d)


# -- tokenization ----------------------------------------------------------------------------------
def make_tokenizer(config: BM25Config) -> Tokenizer:
    """The bm25s tokenizer for `config`: lowercase, split on `\\b\\w\\w+\\b`, drop stopwords, stem."""
    from bm25s.tokenization import Tokenizer

    try:
        return Tokenizer(lower=config.lowercase, stopwords=config.stopwords, stemmer=_make_stemmer(config.stemmer))
    except ValueError as e:  # bm25s: unknown stopword list
        raise ConfigError(f"BM25 stopwords {config.stopwords!r}: {e}") from None


def _make_stemmer(name: str | None):
    if name is None:
        return None
    import Stemmer

    try:
        return Stemmer.Stemmer(name)
    except KeyError:
        raise ConfigError(f"unknown stemmer {name!r}; choose from {Stemmer.algorithms()} or None") from None


def _tokenize_passages(ds, tokenizer: Tokenizer, show_progress: bool | None, start: int = 0,
                       corpus_ids: list[list[int]] | None = None) -> list[list[int]]:
    """Token ids of passages [start, N), streamed from `ds` a block at a time, growing the tokenizer's
    vocabulary; appended to `corpus_ids` (the ids of passages [0, start)) when given.

    allow_empty=False: a passage without any term gets no tokens (length 0), not bm25s's "" placeholder
    token, so its length and avgdl are those of the BM25 formula.
    """
    n = len(ds)
    corpus_ids = [] if corpus_ids is None else corpus_ids
    with progress(total=n - start, desc="bm25 tokenize", unit="passage", enabled=show_progress) as bar:
        for first in range(start, n, BLOCK_PASSAGES):
            texts = ds.passage_input_texts(range(first, min(first + BLOCK_PASSAGES, n)))  # titles, if embedded
            corpus_ids.extend(tokenizer.streaming_tokenize(texts, update_vocab=True, allow_empty=False))
            bar.update(len(texts))
    return corpus_ids


def _flat_ids(corpus_ids: list[list[int]], n_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """(uint32 term ids of every passage, concatenated; uint64 N + 1 offsets): what TOKEN_IDS/OFFSETS hold."""
    import itertools

    offsets = np.zeros(len(corpus_ids) + 1, dtype=np.uint64)
    np.cumsum(np.fromiter(map(len, corpus_ids), dtype=np.uint64, count=len(corpus_ids)), out=offsets[1:])
    flat = np.fromiter(itertools.chain.from_iterable(corpus_ids), dtype=np.uint32, count=n_tokens)
    return flat, offsets


def _nested_ids(flat: np.ndarray, offsets: np.ndarray, n_terms: int) -> list[list[int]]:
    """The inverse of `_flat_ids`: a list of Python int lists, as the tokenizer returns them.

    The ints come from one pool of n_terms objects (an object-array gather, as fast as `tolist`), so
    each token costs one 8-byte pointer, as in a build, not a 28-byte int object of its own.
    """
    ids = np.arange(n_terms).astype(object)[flat].tolist()
    off = offsets.tolist()
    return [ids[a:b] for a, b in zip(off[:-1], off[1:], strict=True)]


# -- build -----------------------------------------------------------------------------------------
def build_bm25_index(
    ds,
    name: str,
    config: BM25Config = BM25Config(),
    *,
    overwrite: bool = False,
    show_progress: bool | None = None,
) -> BM25Index:
    """Index the passages of `ds` under `DS/indexes/NAME/` and return the index (held in memory).

    Memory while building (bm25s indexes in memory, from token ids): the token ids of
    the whole corpus as Python lists (one 8-byte pointer per token: the int objects are
    shared with the vocabulary dicts), the tokenizer's dicts (every distinct surface word,
    its stem, the stem's id), then inside `bm25s.BM25.index` three flat arrays of
    12 bytes per (passage, distinct term) pair plus their CSC copy (8 bytes per pair and
    a transient 16 bytes per pair for the sort), and the uint32 copy of the token ids saved
    for updates (4 bytes per token). Passage text is held one block at a time.
    """
    check_name(name)
    n = len(ds)
    if n == 0:
        raise DatastoreError(f"{ds.root}: the datastore has no passages to index")
    if not is_staged(ds):  # built beside the live index and swapped in by one journaled commit
        with index_transaction(ds) as view:
            index = build_bm25_index(view, name, config, overwrite=overwrite, show_progress=show_progress)
        index.ds, index.meta = ds, read_index_config(ds, name, kind=INDEX_TYPE)
        return index
    if n > MAX_PASSAGES:
        raise ConfigError(f"bm25s indexes at most {MAX_PASSAGES:,} passages; the datastore has {n:,}")
    tokenizer = make_tokenizer(config)  # before touching the directory: a bad stemmer name leaves no trace
    path = prepare_index_dir(ds, name, overwrite)
    t_start = time.perf_counter()
    corpus_ids = _tokenize_passages(ds, tokenizer, show_progress)
    seconds = {"tokenize": time.perf_counter() - t_start}
    return _index_and_save(ds, name, config, path, tokenizer, corpus_ids, seconds, t_start, show_progress)


def _index_and_save(ds, name: str, config: BM25Config, path: Path, tokenizer: Tokenizer,
                    corpus_ids: list[list[int]], seconds: dict[str, float], t_start: float,
                    show_progress: bool | None, extra: dict[str, Any] | None = None) -> BM25Index:
    """What a build and an update share once every passage's term ids are known: score, save, config."""
    n = len(ds)
    vocab = tokenizer.get_vocab_dict()
    if not vocab:
        raise ConfigError(f"{ds.root}: no passage has a word left after tokenization; nothing to index")
    n_tokens = sum(len(ids) for ids in corpus_ids)
    n_empty = sum(1 for ids in corpus_ids if not ids)

    t0 = time.perf_counter()
    flat, offsets = _flat_ids(corpus_ids, n_tokens)  # saved for the next update (see update_bm25_index)
    seconds["token_cache"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    retriever = _index(corpus_ids, vocab, config, _resolve_progress(show_progress))
    del corpus_ids  # the largest structure of the build; free it before saving
    seconds["index"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    retriever.save(str(path), show_progress=False)
    tokenizer.save_vocab(str(path))
    tokenizer.save_stopwords(str(path))
    save_npy_atomic(path / TOKEN_IDS, flat)
    save_npy_atomic(path / TOKEN_OFFSETS, offsets)
    del flat, offsets
    seconds["save"] = time.perf_counter() - t0

    meta = {
        "type": INDEX_TYPE,
        "name": name,
        "config": asdict(config),
        "vocabulary_size": len(vocab),
        "counts": {"passages": n, "tokens": n_tokens, "empty_passages": n_empty,
                   "postings": int(len(retriever.scores["data"]))},
        "build_seconds": time.perf_counter() - t_start,
        "stage_seconds": seconds,
        "library": _library_versions(),
        "datastore": bm25_state(ds),
        "probe": text_probe(ds, n),
        **(extra or {}),
    }
    write_index_config(path, meta)
    log.info(
        "bm25 index %r: %d passages, %d terms, %d postings in %.1f s",
        name, n, len(vocab), meta["counts"]["postings"], meta["build_seconds"],
    )
    # the arrays just built, still in memory (re-reading 10+ MB of vocabulary JSON would
    # cost ~5% of the build); `BM25Index.open` maps the saved ones
    return BM25Index(ds, name, read_index_config(ds, name, kind=INDEX_TYPE), retriever, tokenizer)


# -- update after an add ---------------------------------------------------------------------------
def update_bm25_index(ds, name: str, *, source=None, show_progress: bool | None = None) -> BM25Index:
    """Bring index NAME up to date with the passages appended to `ds` since it was built; the result is
    the index `build_bm25_index` would build from `ds` now (same scores, vocabulary and results).

    The old passages' term ids are read from the index (TOKEN_IDS), only the new passages are
    tokenized, continuing the saved vocabulary; bm25s then scores the whole corpus again (idf and the
    average length changed). Falls back to a full rebuild, with the same config, when the index cannot
    be continued: no saved term ids, other bm25s/PyStemmer versions, or a datastore that was not only
    appended to. Inside an index transaction (a writer's view), `source` is the datastore whose
    index NAME is the old one (the live datastore; default `ds`); outside, the update is its own commit.
    """
    check_name(name)
    if not is_staged(ds):
        with index_transaction(ds) as view:
            index = update_bm25_index(view, name, source=ds, show_progress=show_progress)
        index.ds, index.meta = ds, read_index_config(ds, name, kind=INDEX_TYPE)
        return index
    source = ds if source is None else source
    old = read_index_config(source, name, kind=INDEX_TYPE, check_fresh=False)
    config = BM25Config.from_dict(build_config(old))
    t_start = time.perf_counter()
    loaded = _load_prefix(source, name, old, ds, config)
    if isinstance(loaded, str):
        log.info("bm25 index %r: rebuilt in full (%s)", name, loaded)
        return build_bm25_index(ds, name, config, overwrite=True, show_progress=show_progress)
    tokenizer, corpus_ids = loaded
    seconds = {"load": time.perf_counter() - t_start}
    n_old = len(corpus_ids)
    path = prepare_index_dir(ds, name, overwrite=True)  # after reading: it may be the directory read
    t0 = time.perf_counter()
    corpus_ids = _tokenize_passages(ds, tokenizer, show_progress, start=n_old, corpus_ids=corpus_ids)
    seconds["tokenize"] = time.perf_counter() - t0
    update = {"added": len(ds) - n_old, "from_passages": n_old}
    return _index_and_save(ds, name, config, path, tokenizer, corpus_ids, seconds, t_start, show_progress,
                           extra={"updates": [*old.get("updates", []), update]})


def _load_prefix(source, name: str, old: dict[str, Any], ds, config: BM25Config):
    """(tokenizer with the saved vocabulary, term ids of the indexed passages) when index NAME of
    `source` can be continued with the passages appended to `ds`; else why not (a string)."""
    n_old = int(old["counts"]["passages"])
    if old.get("library") != _library_versions():
        return f"built with {old.get('library')}, now {_library_versions()}"
    if n_old > len(ds) or text_probe(ds, n_old) != old.get("probe"):
        return f"the datastore's first {n_old:,} passages are not the ones indexed"
    path = index_dir(source, name)
    if not (path / TOKEN_IDS).exists() or not (path / TOKEN_OFFSETS).exists():
        return "the index has no saved term ids"
    try:
        flat, offsets = load_npy(path / TOKEN_IDS), load_npy(path / TOKEN_OFFSETS)
        tokenizer = make_tokenizer(config)
        tokenizer.load_vocab(str(path))
    except (OSError, ValueError, KeyError) as e:
        return f"unreadable saved term ids or vocabulary ({e})"
    n_terms = len(tokenizer.get_vocab_dict())
    if (
        flat.dtype != np.uint32 or flat.ndim != 1 or offsets.dtype != np.uint64 or offsets.shape != (n_old + 1,)
        or int(offsets[0]) != 0 or int(offsets[-1]) != len(flat) or len(flat) != int(old["counts"]["tokens"])
        or np.any(np.diff(offsets.astype(np.int64)) < 0)
        or n_terms != int(old["vocabulary_size"]) or (len(flat) and int(flat.max()) >= n_terms)
    ):
        return "the saved term ids do not match the index"
    return tokenizer, _nested_ids(flat, offsets, n_terms)


def _index(corpus_ids: list[list[int]], vocab: dict[str, int], config: BM25Config, show: bool) -> bm25s.BM25:
    import bm25s

    retriever = bm25s.BM25(method=config.method, k1=config.k1, b=config.b)
    # a copy: bm25s adds its "" token to the dict it is given, and the tokenizer's must stay as it is
    retriever.index((corpus_ids, dict(vocab)), show_progress=show, leave_progress=False)
    return retriever


def text_probe(ds, n: int) -> str:
    """A fingerprint of 16 evenly spaced passages' text among the first n (see `check_probe`)."""
    import hashlib

    h = hashlib.sha256()
    for i in probe_ids(n):
        h.update(ds.passage(int(i)).encode("utf-8") + b"\0")
    return h.hexdigest()[:16]


def bm25_state(ds) -> dict[str, Any]:
    """The datastore facts a BM25 index depends on: passages and generation, not the encoder."""
    return {**datastore_state(ds), "encoder_fingerprint": None, "dim": None}


def _library_versions() -> dict[str, str]:
    from importlib.metadata import version

    return {"bm25s": version("bm25s"), "PyStemmer": version("PyStemmer")}


def _resolve_progress(show_progress: bool | None) -> bool:
    return sys.stderr.isatty() if show_progress is None else show_progress


# -- search ----------------------------------------------------------------------------------------
class BM25Index:
    """A built BM25 index of a datastore, opened from `DS/indexes/NAME/`. Implements
    `relm.retrieval.registry.Index` (kind "bm25"; it searches texts, not vectors)."""

    kind = INDEX_TYPE

    @classmethod
    def rebuild(cls, view, saved: dict[str, Any]) -> None:
        build_bm25_index(view, saved["name"], BM25Config.from_dict(build_config(saved)), overwrite=True)

    @classmethod
    def update(cls, live, view, name: str) -> None:
        """Stage NAME with the passages `view` appended (only those are tokenized; see update_bm25_index)."""
        update_bm25_index(view, name, source=live)

    def __init__(self, ds, name: str, meta: dict[str, Any], retriever: bm25s.BM25, tokenizer: Tokenizer):
        self.ds = ds
        self.name = name
        self.meta = meta
        self.config = BM25Config.from_dict(build_config(meta))
        self._retriever = retriever
        self._tokenizer = tokenizer
        # the bm25s tokenizer caches every word it sees in dicts while tokenizing queries
        self._tokenize_lock = threading.Lock()

    @classmethod
    def open(cls, ds, name: str, *, mmap: bool = True) -> BM25Index:
        """Open an index; refuses one built for another state of the datastore (passages, generation)."""
        import bm25s

        meta = read_index_config(ds, name, kind=INDEX_TYPE)
        path = index_dir(ds, name)
        config = BM25Config.from_dict(build_config(meta))
        try:
            # backend="numpy": the bm25s retrieval path relm is tested with, whatever is installed
            retriever = bm25s.BM25.load(str(path), mmap=mmap, load_corpus=False, show_progress=False,
                                        backend="numpy")
            tokenizer = make_tokenizer(config)
            tokenizer.load_vocab(str(path))
            tokenizer.load_stopwords(str(path))
        except (OSError, ValueError) as e:
            raise DatastoreError(f"{path}: damaged BM25 index ({e}); rebuild it with overwrite") from None
        _check_consistent(path, meta, retriever, tokenizer)
        check_probe(ds, meta, name, text_probe(ds, int(meta["counts"]["passages"])))
        _plain_views(retriever.scores)
        return cls(ds, name, meta, retriever, tokenizer)

    def __len__(self) -> int:
        return int(self.meta["counts"]["passages"])

    @property
    def vocabulary_size(self) -> int:
        return int(self.meta["vocabulary_size"])

    def tokenize(self, queries: Sequence[str]) -> list[list[int]]:
        """Term ids of each query; words the corpus never had are dropped."""
        with self._tokenize_lock:
            # update_vocab=False: a new word whose stem is known maps to that stem's id,
            # anything else is dropped; the index's terms never change
            return self._tokenizer.tokenize(
                list(queries), update_vocab=False, return_as="ids", show_progress=False, allow_empty=False
            )

    def score_all(self, queries: Sequence[str]):
        """Exact BM25 of every passage for each query: float32 (N,) arrays, one per query, in order
        (bm25s's full score vector, before any top-k; zero where no query term matches). For checking
        `search` (relm index-eval); N floats a query."""
        for ids in self.tokenize(check_queries(queries)):
            if not ids:
                yield np.zeros(len(self), dtype=np.float32)
                continue
            yield np.asarray(self._retriever.get_scores_from_ids(ids), dtype=np.float32)

    def search(
        self,
        queries: str | Sequence[str],
        k: int = 10,
        *,
        allowed: np.ndarray | None = None,
        n_threads: int | None = None,
    ) -> SearchResult:
        """Top-k passages by BM25 for a batch of queries: (scores float32 (nq, k), ids int64 (nq, k)).

        Best first (equal scores by the smaller id; which of several passages tied at the k-th
        score make the cut is bm25s's choice), padded with (-inf, -1) past the last hit.
        `allowed`, a boolean mask over passage ids, excludes the False ones. `n_threads`
        (default: every CPU) threads score the queries in parallel.
        """
        queries = check_queries(queries)
        k = check_k(k)
        n_threads = check_threads(n_threads)
        n = len(self)
        allowed = check_allowed(allowed, n)
        nq = len(queries)
        out_s = np.full((nq, k), -np.inf, dtype=np.float32)
        out_i = np.full((nq, k), PAD_ID, dtype=np.int64)
        token_ids = self.tokenize(queries)
        # queries without any known term have no hits; bm25s is not asked about them
        live = [q for q, ids in enumerate(token_ids) if ids]
        if not live or (allowed is not None and not allowed.any()):
            return out_s, out_i
        if len(live) < nq:
            token_ids = [token_ids[q] for q in live]
        weights = allowed  # bm25s multiplies the float32 scores by it in place: a bool mask needs no float copy
        res = self._retriever.retrieve(
            token_ids,
            k=min(k, n),  # bm25s refuses k > N; the rest is padding
            show_progress=False,
            n_threads=0 if n_threads == 1 or len(live) == 1 else n_threads,  # 0: no thread pool
            weight_mask=weights,
        )
        s, i = hits_only(res.scores, res.documents, allowed)
        s, i = topk(s, k, ids=i)  # canonical order: (-score, id), padding last, padded to k
        if len(live) == nq:
            return s, i
        out_s[live], out_i[live] = s, i
        return out_s, out_i


def _check_consistent(path: Path, meta: dict[str, Any], retriever: bm25s.BM25, tokenizer: Tokenizer) -> None:
    """The bm25s files and config.json describe the same index (guards against mixed-up files)."""
    n_docs = int(retriever.scores["num_docs"])
    n_terms = len(retriever.scores["indptr"]) - 1
    if (
        n_docs != meta["counts"]["passages"]
        or n_terms != meta["vocabulary_size"]
        or len(tokenizer.get_vocab_dict()) != n_terms
    ):
        raise DatastoreError(
            f"{path}: damaged BM25 index (config.json says {meta['counts']['passages']} passages and "
            f"{meta['vocabulary_size']} terms; the files hold {n_docs} and {n_terms}); rebuild it with overwrite"
        )


def _plain_views(scores: dict[str, Any]) -> None:
    """Swap bm25s's np.memmap arrays for plain ndarray views of the same mapping (no copy).

    A query slices the postings of each of its terms; np.memmap's `__getitem__` and
    `__array_finalize__` on every slice cost ~10% of a 20k-passage query.
    """
    for key in ("data", "indices", "indptr"):
        if isinstance(scores[key], np.memmap):
            scores[key] = np.asarray(scores[key])


# -- small pure helpers ----------------------------------------------------------------------------
def check_threads(n_threads: int | None) -> int:
    if n_threads is None:
        return os.cpu_count() or 1
    if not isinstance(n_threads, int | np.integer) or isinstance(n_threads, bool) or n_threads < 1:
        raise ConfigError(f"n_threads must be a positive integer, got {n_threads!r}")
    return int(n_threads)


def check_allowed(allowed: np.ndarray | None, n: int) -> np.ndarray | None:
    if allowed is None:
        return None
    allowed = np.asarray(allowed)
    if allowed.dtype != np.bool_ or allowed.shape != (n,):
        raise ConfigError(
            f"allowed must be a boolean mask over the {n:,} passages, got {allowed.dtype} of shape {allowed.shape}"
        )
    return allowed


def hits_only(scores: np.ndarray, ids: np.ndarray, allowed: np.ndarray | None) -> SearchResult:
    """Turn non-hits into padding: scores <= 0 (no term matched, or weighted out) and ids outside `allowed`."""
    scores = np.asarray(scores, dtype=np.float32)
    ids = np.asarray(ids, dtype=np.int64)
    hit = scores > 0
    if allowed is not None:
        hit &= allowed[ids]
    return np.where(hit, scores, np.float32(-np.inf)), np.where(hit, ids, PAD_ID)
