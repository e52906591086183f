"""ANN index shapes: the presets' sizes and a planner that fits an index to a memory budget.

Pure functions: nothing here touches faiss or the disk. Sizes are in bytes,
times in seconds; every estimate is a formula over (n vectors, d dimensions)
written next to the constant it uses, so a wrong estimate is fixed in one place.

Presets (faiss `index_factory` strings, inner-product metric):

    flat         Flat                       exact; 4d bytes/vector
    hnsw         HNSW32                     graph over float32 vectors; 4d + 8M + 12 bytes/vector
    ivfpq        IVF{nlist},PQ{m}np           m-byte codes + 8-byte ids in inverted lists
    ivf-hnsw-pq  IVF{nlist}_HNSW32,PQ{m}np    the same, with an HNSW coarse quantizer (fast assignment at large nlist)
    opq-ivfpq    OPQ{m},IVF{nlist},PQ{m}np    the same, after a learned rotation (better codes, slower training)

"np" turns off faiss's polysemous training of the PQ codebook: it only permutes centroid
ids for Hamming pre-filtering, which relm never uses, and costs more than the k-means itself.

Refining re-scores k x refine_factor candidates with the datastore's own float16
vectors, read from the memory-mapped shards: it costs disk reads, not RAM.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import ConfigError

PRESETS: dict[str, str] = {
    "flat": "Flat",
    "hnsw": "HNSW32",
    "ivfpq": "IVF{nlist},PQ{m}np",
    "ivf-hnsw-pq": "IVF{nlist}_HNSW32,PQ{m}np",
    "opq-ivfpq": "OPQ{m},IVF{nlist},PQ{m}np",
}

# faiss's k-means warns below 39 training points per centroid (ClusteringParameters.min_points_per_centroid)
# and subsamples above 256 (max_points_per_centroid).
MIN_POINTS_PER_CENTROID = 39
MAX_POINTS_PER_CENTROID = 256
PQ_CENTROIDS = 256  # 8-bit PQ: 256 centroids per sub-quantizer
TRAIN_POINTS_PER_LIST = 64  # default training sample: 64 x nlist (faiss recommends 30-256 x nlist)
PQ_DIMS_PER_SUBQUANTIZER = 6  # m = d / 6 -> 64 one-byte codes for d = 384
HNSW_M = 32
HNSW_QUANTIZER_MIN_NLIST = 4096  # from here a flat coarse quantizer dominates assignment cost
FLAT_MAX_N = 262_144  # beyond this brute force costs > 0.2 GFLOP per query at d = 384

# Build-time constants (2 shared cores, measured on the quick benchmark; see benchmarks/README.md).
GEMM_FLOPS = 2.0e10  # sustained float32 BLAS rate (IVF k-means, PQ encoding, flat assignment)
SCALAR_FLOPS = 2.0e9  # distance computations with random access (HNSW insertion and search)
PQ_KMEANS_FLOPS = 2.0e9  # k-means in d/m = 6 dimensions: too thin for BLAS (measured 1.8e9 on 2 busy cores)
OPQ_FLOPS = 1.3e9  # OPQ's inner PQ training (measured: OPQ64 on 20,000 x 384 trains in 600 s)
READ_BYTES_PER_S = 5.0e8  # float16 shards from disk or page cache, upcast to float32
IVF_KMEANS_ITERS = 10  # faiss IndexIVF.cp.niter
PQ_KMEANS_ITERS = 25  # faiss ProductQuantizer.cp.niter
OPQ_ITERS, OPQ_PQ_ITERS, OPQ_MAX_TRAIN = 50, 4, 65_536  # faiss OPQMatrix defaults
HNSW_INSERT_DISTANCES = 500  # distance evaluations per HNSW32 insertion at 20,000 vectors (efConstruction 40)
HNSW_SEARCH_DISTANCES = 400  # distance evaluations per HNSW quantizer lookup


def choose_nlist(n: int) -> int:
    """Inverted lists for n vectors: the power of two nearest 4·sqrt(n), capped so each list gets
    at least MIN_POINTS_PER_CENTROID training points (nlist ≤ n / 39), and at least 1."""
    if n <= 0:
        return 1
    want = 2 ** round(math.log2(max(4 * math.sqrt(n), 1)))
    cap = 2 ** int(math.log2(n / MIN_POINTS_PER_CENTROID)) if n >= MIN_POINTS_PER_CENTROID else 1
    return max(1, min(want, cap))


def choose_pq_m(d: int, dims_per_subquantizer: int = PQ_DIMS_PER_SUBQUANTIZER) -> int:
    """PQ sub-quantizers: the largest divisor of d that is ≤ d / 6 (64 for d = 384), at least 1."""
    limit = max(1, d // dims_per_subquantizer)
    return max(m for m in range(1, limit + 1) if d % m == 0)


def preset_factory(preset: str, n: int, d: int, *, m: int | None = None) -> str:
    """The faiss factory string of a preset for n vectors of dimension d."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown ANN preset {preset!r}; choose from {', '.join(PRESETS)}")
    return PRESETS[preset].format(nlist=choose_nlist(n), m=m or choose_pq_m(d))


def default_train_size(n: int, nlist: int | None, uses_pq: bool) -> int:
    """Training sample: 64·nlist, at least 39·256 = 9,984 for PQ's 256 centroids, capped by n."""
    want = TRAIN_POINTS_PER_LIST * (nlist or 0)
    if uses_pq:
        want = max(want, MIN_POINTS_PER_CENTROID * PQ_CENTROIDS)
    return min(n, want)


# -- memory, disk and build-time estimates --------------------------------------------------------


def hnsw_bytes_per_vector(d: int, M: int = HNSW_M) -> float:
    """float32 vector (4d) + level-0 links (2M int32 = 8M) + levels and upper links (~12)."""
    return 4 * d + 8 * M + 12


def ivfpq_bytes(n: int, d: int, nlist: int, m: int, *, opq: bool = False, hnsw_quantizer: bool = False) -> float:
    """n·(m-byte code + 8-byte id) + nlist·4d (centroids) + 256·4d (PQ codebooks)
    [+ 4d² OPQ rotation] [+ nlist·(8M + 12) HNSW links over the centroids]."""
    total = n * (m + 8) + nlist * 4 * d + PQ_CENTROIDS * 4 * d
    if opq:
        total += 4 * d * d
    if hnsw_quantizer:
        total += nlist * (8 * HNSW_M + 12)
    return total


def estimate_memory(preset: str, n: int, d: int, m: int | None = None) -> float:
    """Resident bytes of a preset's index while searching (the file is the same size, give or take
    a header; IVF lists are memory-mapped, so they count against the page cache, not RSS)."""
    m = m or choose_pq_m(d)
    nlist = choose_nlist(n)
    if preset == "flat":
        return 4.0 * d * n
    if preset == "hnsw":
        return hnsw_bytes_per_vector(d) * n
    if preset in ("ivfpq", "ivf-hnsw-pq", "opq-ivfpq"):
        return ivfpq_bytes(n, d, nlist, m, opq=preset == "opq-ivfpq", hnsw_quantizer=preset == "ivf-hnsw-pq")
    raise ConfigError(f"unknown ANN preset {preset!r}; choose from {', '.join(PRESETS)}")


def estimate_build_seconds(preset: str, n: int, d: int, m: int | None = None) -> float:
    """Reading + training + adding, from the flop counts below and the constants above.

    read:   2d bytes per vector / READ_BYTES_PER_S
    IVF k-means:  2·n_train·nlist·d flops x IVF_KMEANS_ITERS          (GEMM)
    PQ k-means:   2·min(n_train, 256·256)·256·d flops x PQ_KMEANS_ITERS (PQ_KMEANS_FLOPS: m problems of d/m dims)
    OPQ:          OPQ_ITERS x 2·min(n_train, 65536)·256·d·OPQ_PQ_ITERS  (OPQ_FLOPS)
    add, IVF:     flat quantizer 2·n·nlist·d (GEMM) or HNSW lookup HNSW_SEARCH_DISTANCES·2d (scalar),
                  plus PQ encoding 2·n·256·d (GEMM)
    add, HNSW:    HNSW_INSERT_DISTANCES·2d·log2(n)/log2(20000) per vector (scalar; deeper graph as n grows,
                  and at 1M the graph no longer fits in cache, which this does not model)
    """
    m = m or choose_pq_m(d)
    seconds = 2.0 * d * n / READ_BYTES_PER_S
    if preset == "flat":
        return seconds
    if preset == "hnsw":
        depth = max(math.log2(max(n, 2)) / math.log2(20_000), 1.0)
        return seconds + n * HNSW_INSERT_DISTANCES * depth * 2 * d / SCALAR_FLOPS
    nlist = choose_nlist(n)
    n_train = default_train_size(n, nlist, uses_pq=True)
    pq_flops = 2.0 * min(n_train, MAX_POINTS_PER_CENTROID * PQ_CENTROIDS) * PQ_CENTROIDS * d * PQ_KMEANS_ITERS
    seconds += pq_flops / PQ_KMEANS_FLOPS
    if preset == "opq-ivfpq":
        seconds += OPQ_ITERS * 2.0 * min(n_train, OPQ_MAX_TRAIN) * PQ_CENTROIDS * d * OPQ_PQ_ITERS / OPQ_FLOPS
    flops = 2.0 * n_train * nlist * d * IVF_KMEANS_ITERS
    flops += 2.0 * n * PQ_CENTROIDS * d
    if preset == "ivf-hnsw-pq":
        seconds += n * HNSW_SEARCH_DISTANCES * 2 * d / SCALAR_FLOPS
    else:
        flops += 2.0 * n * nlist * d
    return seconds + flops / GEMM_FLOPS


# -- the planner ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """What `plan_index` chose and why; `factory="auto"` builds `factory`."""

    factory: str
    preset: str
    est_memory_bytes: int
    est_disk_bytes: int
    est_build_seconds: float
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _pq_candidates(n: int, d: int) -> list[str]:
    """PQ shapes in order of accuracy: OPQ's rotation gives better codes; at large nlist the
    HNSW coarse quantizer replaces it (a flat quantizer's assignment cost grows with nlist)."""
    if choose_nlist(n) >= HNSW_QUANTIZER_MIN_NLIST:
        return ["ivf-hnsw-pq", "ivfpq"]
    return ["opq-ivfpq", "ivfpq"]


def plan_index(n: int, dim: int, memory_budget_bytes: int, *, flat_max_n: int | None = FLAT_MAX_N) -> Plan:
    """The most accurate index for n vectors of dimension `dim` whose estimated RAM fits the budget.

    Order: Flat (exact; only up to `flat_max_n` vectors, beyond which brute force is too slow to
    be an index; None lifts the limit), HNSW32, then IVF-PQ shapes with m = d/6 byte codes,
    then with m halved until they fit. Raises ConfigError when nothing fits.
    """
    if n <= 0 or dim <= 0:
        raise ConfigError(f"cannot plan an index for {n} vectors of dimension {dim}")
    if memory_budget_bytes <= 0:
        raise ConfigError(f"memory budget must be positive, got {memory_budget_bytes}")
    options: list[tuple[str, int | None, str]] = []
    if flat_max_n is None or n <= flat_max_n:
        options.append(("flat", None, "exact search fits in memory"))
    options.append(("hnsw", None, "float32 vectors and an HNSW graph fit in memory"))
    m = choose_pq_m(dim)
    while m >= 1:
        for preset in _pq_candidates(n, dim):
            options.append((preset, m, f"{m}-byte PQ codes fit; refine with the float16 datastore to recover recall"))
        if m == 1 or m % 2:
            break
        m //= 2
    tried = []
    for preset, m_opt, why in options:
        mem = estimate_memory(preset, n, dim, m_opt)
        tried.append(f"{preset}{'' if m_opt is None else f'(m={m_opt})'} {mem / 2**20:,.0f} MiB")
        if mem <= memory_budget_bytes:
            factory = PRESETS[preset].format(nlist=choose_nlist(n), m=m_opt or choose_pq_m(dim))
            skipped = "" if len(tried) == 1 else f"; more accurate options did not fit ({'; '.join(tried[:-1])})"
            return Plan(
                factory=factory,
                preset=preset,
                est_memory_bytes=int(mem),
                est_disk_bytes=int(mem),
                est_build_seconds=round(estimate_build_seconds(preset, n, dim, m_opt), 1),
                reason=f"{why}: ~{mem / 2**20:,.0f} MiB of {memory_budget_bytes / 2**20:,.0f} MiB{skipped}",
            )
    raise ConfigError(
        f"no index for {n:,} vectors of dimension {dim} fits {memory_budget_bytes / 2**20:,.1f} MiB "
        f"(smallest: {tried[-1]}); raise the budget or shard the datastore"
    )
