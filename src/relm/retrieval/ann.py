"""Dense approximate nearest-neighbour indexes (faiss) over a datastore's embeddings.

    build_ann_index(ds, "dense", AnnConfig("ivf-hnsw-pq"))   # -> DS/indexes/dense/{index.faiss, config.json}
    index = AnnIndex.open(ds, "dense")                        # memory-mapped where faiss can
    scores, ids = index.search(query_vectors, k=10, refine_factor=4, allowed=mask)

Building trains on a seeded random sample of the datastore's vectors (read from
the float16 shards, upcast to float32 only for the sample), then adds every
vector shard by shard in blocks of `add_block_rows`, so memory stays at the
index plus one block. Passage ids are the faiss ids: vectors are added in
passage order, so the i-th vector added is passage i.

Search goes through per-call faiss `SearchParameters` (nprobe, efSearch, an
`IDSelectorBitmap` for `allowed`), nested so they reach the inner index of an
IVF with an HNSW quantizer or behind an OPQ rotation; nothing on the shared
index is mutated, so concurrent searches are safe. Refining fetches k x
refine_factor candidates and re-scores them exactly with the datastore's own
vectors. Parameters and refining live in `ann_search.py`, tuning and evaluation in
`ann_tune.py`, sizing in `planner.py`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import _from_dict
from ..errors import ConfigError, DatastoreError
from ..progress import progress
from . import planner
from .ann_search import (
    LOCAL_PLAN_BELOW,
    PROBE_WIDTH,
    filter_plan,
    fp16_refine_index,
    local_ef,
    refine_exact,
    refine_parameters,
    search_parameters,
    selector,
    shard_reader,
    short_rows,
)
from .exact import exact_search_subset
from .indexes import (
    SearchResult,
    check_k,
    check_probe,
    datastore_state,
    index_dir,
    index_transaction,
    is_staged,
    prepare_index_dir,
    probe_ids,
    read_index_config,
    stage_copy,
    write_faiss_index,
    write_index_config,
)
from .registry import build_config

log = logging.getLogger(__name__)

KIND = "faiss"
INDEX_FILE = "index.faiss"
METRIC = "inner_product"


@dataclass(frozen=True)
class AnnConfig:
    """How to build an ANN index; saved in its config.json ("config") and rebuilt with `from_dict`.

    factory: a preset (`planner.PRESETS`), "auto" (planned from `memory_budget_bytes`), or any faiss
        `index_factory` string (inner-product metric).
    train_size: training vectors; None: 64 x nlist, at least 9,984 for PQ, capped by the datastore.
    nprobe, ef_search, refine_factor: search defaults (None nprobe: min(nlist, 16)); `tune_ann_index`
        replaces them with measured ones.
    memory_budget_bytes: for "auto"; None: half the machine's physical memory.
    """

    factory: str = "ivf-hnsw-pq"
    train_size: int | None = None
    seed: int = 0
    nprobe: int | None = None
    ef_search: int = 64
    refine_factor: int = 0
    add_block_rows: int = 65_536
    memory_budget_bytes: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AnnConfig:
        """Rebuild from a config.json's "config"; an unknown key is refused (another relm's config)."""
        return _from_dict(cls, d)


# -- resolving the factory --------------------------------------------------------------------------


@dataclass(frozen=True)
class Resolved:
    factory: str
    preset: str | None
    plan: planner.Plan | None


def _faiss():
    import faiss

    return faiss


def faiss_message(e: Exception) -> str:
    """The useful tail of a faiss C++ error ('Error in f() at file.cpp:12: could not parse ...')."""
    text = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
    m = re.match(r"^Error in .*? at \S+:\d+: (.*)$", text)
    return m.group(1) if m else text


def resolve_factory(config: AnnConfig, n: int, d: int) -> Resolved:
    """The factory string this config builds for n vectors of dimension d, checked by faiss."""
    name = config.factory
    if name == "auto":
        budget = config.memory_budget_bytes or _half_physical_memory()
        plan = planner.plan_index(n, d, budget)
        return Resolved(plan.factory, plan.preset, plan)
    if name in planner.PRESETS:
        factory, preset = planner.preset_factory(name, n, d), name
    else:
        factory, preset = name, None
    try:
        _faiss().index_factory(d, factory, _faiss().METRIC_INNER_PRODUCT)
    except Exception as e:  # faiss raises RuntimeError for parse errors, others for bad shapes
        raise ConfigError(
            f"unknown ANN index {name!r}: not a preset ({', '.join(planner.PRESETS)}, auto) "
            f"and faiss cannot build it for dimension {d} ({faiss_message(e)})"
        ) from e
    return Resolved(factory, preset, None)


def _half_physical_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2


def describe(index) -> dict[str, Any]:
    """The structure search needs to know: which knobs apply and how to nest SearchParameters."""
    faiss = _faiss()
    ivf = faiss.try_extract_index_ivf(index)
    pretransform = isinstance(index, faiss.IndexPreTransform)
    base = faiss.downcast_index(index.index) if pretransform else faiss.downcast_index(index)
    quantizer = None
    if ivf is not None:
        quantizer = "hnsw" if isinstance(faiss.downcast_index(ivf.quantizer), faiss.IndexHNSW) else "flat"
    return {
        "index_class": type(faiss.downcast_index(index)).__name__,
        "ivf": ivf is not None,
        "nlist": int(ivf.nlist) if ivf is not None else None,
        "quantizer": quantizer,
        "hnsw": isinstance(base, faiss.IndexHNSW),
        "pretransform": pretransform,
        "code_size": int(ivf.code_size) if ivf is not None else int(getattr(base, "code_size", 0)),
    }


# -- building ---------------------------------------------------------------------------------------


def iter_vector_blocks(ds, first: int, block_rows: int) -> Iterator[tuple[int, np.ndarray]]:
    """(first id, float32 block) for passages [first, len(ds)), shard by shard, block_rows at a time."""
    for start, vectors in ds.embedding_shards:
        stop = start + vectors.shape[0]
        if stop <= first:
            continue
        for b0 in range(max(first - start, 0), vectors.shape[0], block_rows):
            yield start + b0, np.ascontiguousarray(vectors[b0 : b0 + block_rows], dtype=np.float32)


def train_sample(ds, size: int, seed: int) -> np.ndarray:
    """A seeded random sample of `size` datastore vectors as float32 (size, d), read in id order."""
    rng = np.random.default_rng(seed)
    ids = np.sort(rng.choice(len(ds), size=size, replace=False))
    return ds.embeddings(ids).astype(np.float32)


def vector_probe(ds, n: int) -> str:
    """A fingerprint of 16 evenly spaced vectors among the first n: `add_new_vectors` refuses a
    datastore whose indexed vectors changed (rewritten or compacted) rather than appended to."""
    return hashlib.sha256(np.ascontiguousarray(ds.embeddings(probe_ids(n))).tobytes()).hexdigest()[:16]


def _seed(index, seed: int) -> None:
    """Seed faiss's k-means (coarse quantizer and PQ codebooks); HNSW insertion is not seedable."""
    faiss = _faiss()
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.cp.seed = seed
        sub = faiss.downcast_index(ivf)
        if hasattr(sub, "pq"):
            sub.pq.cp.seed = seed


def _add(index, block: np.ndarray, first: int) -> None:
    """Add a block whose ids are first..first+len-1: ids are passage ids."""
    faiss = _faiss()
    if faiss.try_extract_index_ivf(index) is not None or isinstance(index, faiss.IndexIDMap):
        index.add_with_ids(block, np.arange(first, first + len(block), dtype=np.int64))
    else:
        if index.ntotal != first:
            raise DatastoreError(f"internal: index holds {index.ntotal} vectors, adding from id {first}")
        index.add(block)


def _add_all(index, ds, first: int, block_rows: int, desc: str, show_progress: bool | None) -> None:
    bar = progress(total=len(ds) - first, desc=desc, unit="vec", unit_scale=True, enabled=show_progress)
    with bar:
        for start, block in iter_vector_blocks(ds, first, block_rows):
            _add(index, block, start)
            bar.update(len(block))


_write_index = write_faiss_index  # (the name tests patch)


def build_ann_index(
    ds, name: str, config: AnnConfig = AnnConfig(), *, overwrite: bool = False, show_progress: bool | None = None
) -> AnnIndex:
    """Train and fill a faiss index over every datastore vector; saved as DS/indexes/NAME/.

    Built beside the live index of that name (which keeps serving) and swapped in by one journaled
    commit (`index_transaction`); inside an outer transaction, built into its staging."""
    if not is_staged(ds):
        with index_transaction(ds) as view:
            build_ann_index(view, name, config, overwrite=overwrite, show_progress=show_progress)
        return AnnIndex.open(ds, name)
    faiss = _faiss()
    n, d = len(ds), ds.dim
    if n == 0:
        raise DatastoreError(f"{ds.root} holds no passages; nothing to index")
    for knob, minimum in (("add_block_rows", 1), ("train_size", 1), ("nprobe", 1), ("ef_search", 1),
                          ("refine_factor", 0)):
        _knob(knob, getattr(config, knob), minimum)
    resolved = resolve_factory(config, n, d)
    index = faiss.index_factory(d, resolved.factory, faiss.METRIC_INNER_PRODUCT)
    structure = describe(index)
    uses_pq = "PQ" in resolved.factory
    train_size = 0
    if not index.is_trained:
        train_size = config.train_size or planner.default_train_size(n, structure["nlist"], uses_pq)
        train_size = min(train_size, n)
        if uses_pq and train_size < planner.PQ_CENTROIDS:
            raise ConfigError(
                f"{resolved.factory} needs at least {planner.PQ_CENTROIDS} training vectors for its PQ "
                f"codebooks, got {train_size:,} (datastore: {n:,} passages); raise train_size, or use the "
                "flat or hnsw preset"
            )
    path = prepare_index_dir(ds, name, overwrite)
    _seed(index, config.seed)
    seconds: dict[str, float] = {}
    t_start = time.perf_counter()
    if train_size:
        t0 = time.perf_counter()
        sample = train_sample(ds, train_size, config.seed)
        seconds["sample"] = time.perf_counter() - t0
        log.info("training %s on %d vectors", resolved.factory, train_size)
        t0 = time.perf_counter()
        try:
            index.train(sample)
        except RuntimeError as e:
            raise ConfigError(f"faiss could not train {resolved.factory}: {faiss_message(e)}") from e
        seconds["train"] = time.perf_counter() - t0
        del sample
    t0 = time.perf_counter()
    _add_all(index, ds, 0, config.add_block_rows, f"index {name}", show_progress)
    seconds["add"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    _write_index(index, path / INDEX_FILE)
    seconds["write"] = time.perf_counter() - t0
    seconds["total"] = time.perf_counter() - t_start
    nlist = structure["nlist"]
    search = {
        "nprobe": (config.nprobe or min(nlist, 16)) if nlist else None,
        "ef_search": config.ef_search,
        "refine_factor": config.refine_factor,
    }
    write_index_config(
        path,
        {
            "type": KIND,
            "name": name,
            "factory": resolved.factory,
            "preset": resolved.preset,
            "plan": resolved.plan.to_dict() if resolved.plan else None,
            "metric": METRIC,
            "train_size": train_size,
            "seed": config.seed,
            "dim": d,
            "ntotal": int(index.ntotal),
            "structure": structure,
            "config": config.to_dict(),
            "search": search,
            "build": {
                "seconds": {k: round(v, 4) for k, v in seconds.items()},
                "vectors_per_s": n / max(seconds["add"], 1e-9),
                "faiss_version": faiss.__version__,
            },
            "probe": vector_probe(ds, n),
            "datastore": datastore_state(ds),
        },
    )
    log.info("built ANN index %r (%s) over %d vectors in %.1fs", name, resolved.factory, n, seconds["total"])
    return AnnIndex.open(ds, name)


# -- the opened index -------------------------------------------------------------------------------


def read_faiss_index(path: Path, structure: dict[str, Any]) -> tuple[Any, str]:
    """Load memory-mapped where faiss supports it: IVF inverted lists with IO_FLAG_MMAP (read-only),
    flat code arrays (Flat, HNSW storage, PQ) with IO_FLAG_MMAP_IFC; otherwise a normal read.
    Returns (index, mode) with mode in {"mmap", "mmap-codes", "read"}."""
    faiss = _faiss()
    attempts = (
        [(faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY, "mmap")]
        if structure["ivf"]
        else [(faiss.IO_FLAG_MMAP_IFC, "mmap-codes")]
    )
    for flag, mode in attempts:
        try:
            index = faiss.read_index(str(path), flag)
        except RuntimeError as e:
            log.info("%s: %s load failed (%s); reading it into memory", path, mode, faiss_message(e))
            continue
        ivf = faiss.try_extract_index_ivf(index)
        lists = faiss.downcast_InvertedLists(ivf.invlists) if ivf is not None else None
        if isinstance(lists, faiss.OnDiskInvertedLists):
            # its default prefetch starts 32 threads per search call: 20x slower single queries
            lists.prefetch_nthread = 0
        return index, mode
    try:
        return faiss.read_index(str(path)), "read"
    except RuntimeError as e:
        raise DatastoreError(f"{path}: unreadable faiss index ({faiss_message(e)}); rebuild it with --overwrite") from e


class AnnIndex:
    """An opened faiss index over a datastore: search with passage ids, refine, add appended vectors.
    Implements `relm.retrieval.registry.Index` (kind "faiss")."""

    kind = KIND

    def __init__(self, ds, name: str, config: dict[str, Any], index, load_mode: str, *, refine_in_memory: bool = False):
        self.ds = ds
        self.name = name
        self.config = config
        self.index = index
        self.load_mode = load_mode
        self.structure: dict[str, Any] = config["structure"]
        self.dim = int(index.d)
        self._fetch = shard_reader(ds.embedding_shards)
        self._params: dict[tuple[int | None, int, int], Any] = {}  # unfiltered SearchParameters, reused
        self._resolved: dict[tuple, tuple[int | None, int, int]] = {}  # knob arguments -> validated knobs
        self.refine_in_memory = bool(refine_in_memory)
        self._refiner = None  # (IndexRefine, its SQfp16 index): built on the first in-memory refine

    @classmethod
    def open(cls, ds, name: str, *, check_fresh: bool = True, refine_in_memory: bool = False) -> AnnIndex:
        """Open DS/indexes/NAME, refusing an index older than the datastore or built for another encoder
        (`check_fresh=False` skips that, to bring a stale index up to date with `add_new_vectors`).

        refine_in_memory: refine from an in-RAM copy of the float16 vectors (2·d bytes per vector, read
        on the first refined search) through faiss's IndexRefine, instead of gathering candidate rows
        from the memory-mapped shards in numpy. Same scores; faster when many queries are refined at
        once, at the cost of the RAM; the memory-mapped default lets the page cache decide."""
        config = read_index_config(ds, name, kind=KIND, check_fresh=check_fresh)
        path = index_dir(ds, name) / INDEX_FILE
        if not path.exists():
            raise DatastoreError(f"{path.parent}: damaged index, missing {INDEX_FILE}; rebuild it with --overwrite")
        index, mode = read_faiss_index(path, config["structure"])
        if index.ntotal != config["ntotal"] or index.d != ds.dim:
            raise DatastoreError(
                f"{path}: holds {index.ntotal:,} vectors of dimension {index.d}, its config says "
                f"{config['ntotal']:,} of {config['dim']}; rebuild it with --overwrite"
            )
        if check_fresh:
            check_probe(ds, config, name, vector_probe(ds, int(config["ntotal"])))
        log.debug("opened ANN index %r (%s, %s)", name, config["factory"], mode)
        return cls(ds, name, config, index, mode, refine_in_memory=refine_in_memory)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @classmethod
    def rebuild(cls, view, saved: dict[str, Any]) -> None:
        """Rebuild in `view` exactly as `saved` (a config.json) was built, re-tuned to its target if tuned."""
        from .ann_tune import tune_ann_index

        name = saved["name"]
        build_ann_index(view, name, AnnConfig.from_dict(build_config(saved)), overwrite=True)
        tuning = saved.get("tuning")
        if tuning:
            queries = tuning.get("queries_file")
            if queries and not Path(queries).is_file():
                log.warning("index %r was tuned on %s, which is gone; re-tuning on datastore passages", name, queries)
                queries = None
            tune_ann_index(view, name, target_recall=tuning["target_recall"], k=tuning["k"],
                           n_queries=tuning["n_queries"], seed=tuning["seed"], queries_file=queries)

    @classmethod
    def update(cls, live, view, name: str) -> None:
        """Stage NAME with the vectors `view` appended (no retraining: codes use the existing centroids)."""
        stage_copy(live, view, name)
        add_new_vectors(view, name)

    @property
    def defaults(self) -> dict[str, Any]:
        return dict(self.config["search"])

    def search(
        self,
        vectors: np.ndarray,
        k: int,
        *,
        nprobe: int | None = None,
        ef_search: int | None = None,
        refine_factor: int | None = None,
        allowed: np.ndarray | None = None,
    ) -> SearchResult:
        """Approximate top-k by inner product for query vectors (nq, d): (scores, passage ids).

        Knobs default to the stored ones (set at build, replaced by tuning); a knob that does not
        apply to this index type (nprobe on HNSW, ef_search on a flat-quantizer IVF) is ignored.
        refine_factor r ≥ 1 re-scores k·r candidates with the datastore's float16 vectors, so the
        returned scores of refined hits are exact. `allowed` (bool, one per passage) excludes False ids;
        a filtered search returns min(k, allowed passages) hits per query (widened knobs, or exact over
        the allowed set when it is small: `ann_search.filter_plan`).
        """
        k = check_k(k)
        queries = self._queries(vectors)
        nprobe, ef_search, refine = self._knobs(nprobe, ef_search, refine_factor)
        if len(queries) == 0:
            return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
        if allowed is None:
            return self._search(queries, k, nprobe, ef_search, refine)
        return self._search_filtered(queries, k, nprobe, ef_search, refine, allowed)

    def _search_filtered(self, queries, k, nprobe, ef_search, refine, allowed) -> SearchResult:
        """A filtered search that returns min(k, allowed) hits per query (`ann_search.filter_plan`):
        widened knobs, or exact over the allowed set when it is small; short rows searched exactly."""
        sel = selector(allowed, self.ntotal)  # checks the mask
        n_allowed = int(np.count_nonzero(allowed))
        plan = filter_plan(self.structure, nprobe, ef_search, k, n_allowed, self.ntotal)
        if plan.exact:
            return exact_search_subset(queries, np.flatnonzero(allowed), k, self._fetch)
        if self.structure["hnsw"] and not self.structure["ivf"] and n_allowed < LOCAL_PLAN_BELOW * self.ntotal:
            scores, ids = self._search_hnsw_filtered(queries, k, ef_search, refine, allowed, sel, n_allowed)
        else:
            scores, ids = self._search(queries, k, plan.nprobe, plan.ef_search, refine, sel)
        short = short_rows(ids, min(k, n_allowed))
        if len(short):
            log.debug("index %r: %d of %d filtered queries short of %d hits; searched exactly",
                      self.name, len(short), len(queries), min(k, n_allowed))
            scores[short], ids[short] = exact_search_subset(queries[short], np.flatnonzero(allowed), k, self._fetch)
        return scores, ids

    def _search_hnsw_filtered(self, queries, k, ef_search, refine, allowed, sel, n_allowed) -> SearchResult:
        """HNSW under a filter, planned per query from its unfiltered neighbourhood (`local_ef`): one
        unfiltered search at the stored efSearch, then exact over the allowed set for queries whose
        efSearch would reach it, the rest widened in groups of equal power-of-two efSearch."""
        width = max(ef_search, k, PROBE_WIDTH)
        probe = self._search(queries, width, None, width, 0)[1]
        ef_q = local_ef(probe, allowed, ef_search, k, n_allowed / self.ntotal, self.ntotal)
        scores = np.full((len(queries), k), -np.inf, np.float32)
        ids = np.full((len(queries), k), -1, np.int64)
        exact = np.nonzero(ef_q >= n_allowed)[0]
        if len(exact):
            scores[exact], ids[exact] = exact_search_subset(queries[exact], np.flatnonzero(allowed), k, self._fetch)
        rest = np.nonzero(ef_q < n_allowed)[0]
        buckets = np.minimum(2 ** np.ceil(np.log2(np.maximum(ef_q[rest], 1))), self.ntotal).astype(np.int64)
        for ef in np.unique(buckets):
            rows = rest[buckets == ef]
            scores[rows], ids[rows] = self._search(queries[rows], k, None, int(ef), refine, sel)
        return scores, ids

    def _search(self, queries, k, nprobe, ef_search, refine, sel=None) -> SearchResult:
        in_memory = bool(refine) and self.refine_in_memory
        if sel is None:
            # read-only during a search, so one object serves concurrent calls
            key = (nprobe, ef_search, refine if in_memory else 0)
            params = self._params.get(key)
            if params is None:
                params = search_parameters(self.structure, nprobe, ef_search)
                if in_memory:
                    params = refine_parameters(refine, params)
                if len(self._params) < 64:
                    self._params[key] = params
        else:
            params = search_parameters(self.structure, nprobe, ef_search, sel)
            if in_memory:
                params = refine_parameters(refine, params)
        if in_memory:
            scores, ids = self._memory_refiner().search(queries, k, params=params)
            scores[ids < 0] = -np.inf
            return scores, ids
        kk = k * refine if refine else k
        scores, ids = self.index.search(queries, kk, params=params)
        if refine:
            return refine_exact(queries, ids, k, self._fetch)
        scores[ids < 0] = -np.inf  # faiss pads inner-product results with -FLT_MAX
        return scores, ids

    def _memory_refiner(self):
        if self._refiner is None:
            sq = fp16_refine_index(self.ds.embedding_shards[:], self.dim)
            if sq.ntotal != self.ntotal:
                raise DatastoreError(
                    f"index {self.name!r} holds {self.ntotal:,} vectors, the datastore {sq.ntotal:,}; "
                    "open it with check_fresh=True, or rebuild it with --overwrite"
                )
            # IndexRefine does not own its parts: keep both referenced for as long as it lives
            self._refiner = (_faiss().IndexRefine(self.index, sq), sq)
        return self._refiner[0]

    def _knobs(self, nprobe, ef_search, refine_factor) -> tuple[int | None, int, int]:
        """(nprobe, ef_search, refine) from the arguments and the stored defaults, validated once per
        distinct combination (a single query costs ~10 µs in faiss, so per-call checks show)."""
        key = (nprobe, ef_search, refine_factor)
        hit = self._resolved.get(key) if all(isinstance(v, int | None) for v in key) else None
        if hit is not None:
            return hit
        d = self.config["search"]
        out = (
            _knob("nprobe", nprobe if nprobe is not None else d.get("nprobe"), 1),
            _knob("ef_search", ef_search if ef_search is not None else d.get("ef_search") or 64, 1),
            _knob("refine_factor", refine_factor if refine_factor is not None else d.get("refine_factor"), 0) or 0,
        )
        if len(self._resolved) < 64 and all(isinstance(v, int | None) for v in key):
            self._resolved[key] = out
        return out

    def _queries(self, vectors: np.ndarray) -> np.ndarray:
        if (type(vectors) is np.ndarray and vectors.dtype == np.float32 and vectors.ndim == 2
                and vectors.shape[1] == self.dim and vectors.flags.c_contiguous):
            return vectors  # the common case, checked in ~1 µs
        q = np.asarray(vectors, dtype=np.float32)
        if q.ndim == 1:
            q = q[None, :]
        if q.ndim != 2:
            raise ConfigError(f"query vectors must be (nq, d), got shape {q.shape}")
        if q.shape[1] != self.dim:
            raise ConfigError(f"query vectors have dimension {q.shape[1]}, index {self.name!r} has {self.dim}")
        return np.ascontiguousarray(q)


def _knob(name: str, value: int | None, minimum: int) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{name} must be an integer ≥ {minimum}, got {value!r}")
    return int(value)


def add_new_vectors(ds, name: str, *, show_progress: bool | None = None) -> int:
    """Bring index NAME up to date with passages appended to `ds` since it was built; returns how many
    were added. On a live datastore the update is staged and committed (`index_transaction`)."""
    if not is_staged(ds):
        with index_transaction(ds) as view:
            stage_copy(ds, view, name)
            return add_new_vectors(view, name, show_progress=show_progress)
    config = read_index_config(ds, name, kind=KIND, check_fresh=False)
    built = config["datastore"]
    now = datastore_state(ds)
    for key, what in (("encoder_fingerprint", "another encoder"), ("dim", "another dimension")):
        if built.get(key) != now[key]:
            raise DatastoreError(f"index {name!r} was built for {what}; rebuild it with --overwrite")
    ntotal = int(config["ntotal"])
    if len(ds) < ntotal or vector_probe(ds, ntotal) != config["probe"]:
        raise DatastoreError(
            f"index {name!r}: the datastore's first {ntotal:,} vectors are not the ones indexed "
            "(it was rewritten or compacted, not appended to); rebuild it with --overwrite"
        )
    path = index_dir(ds, name) / INDEX_FILE
    if len(ds) == ntotal and built == now:
        return 0
    index = _faiss().read_index(str(path))  # a writable copy: mmapped lists are read-only
    if index.ntotal != ntotal:
        raise DatastoreError(f"{path}: holds {index.ntotal:,} vectors, its config says {ntotal:,}; rebuild it")
    t0 = time.perf_counter()
    _add_all(index, ds, ntotal, int(build_config(config)["add_block_rows"]), f"update {name}", show_progress)
    _write_index(index, path)
    added = len(ds) - ntotal
    config = {
        **config,
        "ntotal": int(index.ntotal),
        "probe": vector_probe(ds, len(ds)),
        "datastore": now,
        "updates": [*config.get("updates", []), {"added": added, "seconds": round(time.perf_counter() - t0, 4)}],
    }
    write_index_config(path.parent, config)
    log.info("added %d vectors to ANN index %r (now %d)", added, name, index.ntotal)
    return added


# tuning, evaluation and planning live in their own modules; re-exported (on first use: ann_tune imports
# this module) so that `relm.retrieval.ann` is the one import for everything about faiss indexes
_REEXPORTS = {"evaluate_ann_index": "ann_tune", "tune_ann_index": "ann_tune", "Plan": "planner", "plan_index": "planner"}


def __getattr__(name: str):
    if name in _REEXPORTS:
        import importlib

        return getattr(importlib.import_module(f".{_REEXPORTS[name]}", __package__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["AnnConfig", "AnnIndex", "add_new_vectors", "build_ann_index", *_REEXPORTS]
