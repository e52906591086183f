"""faiss ANN indexes: every approximate path against brute force on a seeded synthetic datastore."""

from __future__ import annotations

import json
import shutil

import faiss
import numpy as np
import pytest

from relm import BuildConfig, ChunkConfig, ConfigError, Datastore, DatastoreError, build_datastore
from relm.retrieval import (
    AnnConfig,
    AnnIndex,
    add_new_vectors,
    build_ann_index,
    evaluate_ann_index,
    plan_index,
    tune_ann_index,
)
from relm.retrieval.ann_search import refine_exact, to_float32
from relm.retrieval.ann_tune import drop_self, knob_chains, recall_at_k
from relm.retrieval.exact import exact_search
from relm.retrieval.planner import (
    choose_nlist,
    choose_pq_m,
    default_train_size,
    estimate_memory,
    preset_factory,
)
from relm.retrieval.synthetic import clustered_vectors, write_vector_datastore

from conftest import corpus_records, write_jsonl

N, D, NQ = 8000, 32, 200
PRESET_NAMES = ["flat", "hnsw", "ivfpq", "ivf-hnsw-pq", "opq-ivfpq"]
# OPQ's rotation is trained for 50 rounds of PQ training: a smaller sample keeps the test fast
CONFIGS = {p: AnnConfig(p, train_size=3000 if p == "opq-ivfpq" else None) for p in PRESET_NAMES}


@pytest.fixture(scope="module", autouse=True)
def one_faiss_thread():
    """Deterministic HNSW builds, and no OpenMP barrier stalls on a busy 2-core machine."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def synthetic(n: int = N, extra: int = NQ) -> np.ndarray:
    """n datastore vectors and `extra` held-out queries from the same 32 clusters (float16)."""
    return np.concatenate(list(clustered_vectors(n + extra, D, n_clusters=32, seed=7, block_rows=3000)))


@pytest.fixture(scope="module")
def data():
    x = synthetic()
    return x[:N], x[N:].astype(np.float32)


@pytest.fixture(scope="module")
def ds(tmp_path_factory, data):
    root = tmp_path_factory.mktemp("ann") / "ds"
    write_vector_datastore(root, [data[0]], D, shard_rows=3000)  # shards of 3000, 3000, 2000
    return Datastore.open(root)


@pytest.fixture(scope="module")
def built(ds):
    return {p: build_ann_index(ds, p, CONFIGS[p], show_progress=False) for p in PRESET_NAMES}


@pytest.fixture(scope="module")
def truth(ds, data):
    return exact_search(data[1], ds.embedding_shards, 10)


def recall(ids: np.ndarray, exact_ids: np.ndarray) -> float:
    return recall_at_k(ids, exact_ids, exact_ids.shape[1])


# -- pure pieces ------------------------------------------------------------------------------------
def test_preset_shapes():
    assert choose_nlist(1_000_000) == 4096 and choose_nlist(50_000) == 1024
    assert choose_nlist(N) == 128  # 4·sqrt(8000) = 358 -> 256, capped at 8000 / 39 = 205 -> 128
    assert choose_nlist(10) == 1 and choose_nlist(0) == 1
    assert choose_pq_m(384) == 64 and choose_pq_m(768) == 128 and choose_pq_m(32) == 4 and choose_pq_m(5) == 1
    assert preset_factory("ivf-hnsw-pq", 1_000_000, 384) == "IVF4096_HNSW32,PQ64np"
    assert preset_factory("opq-ivfpq", 1_000_000, 384) == "OPQ64,IVF4096,PQ64np"
    assert preset_factory("flat", 10, 384) == "Flat" and preset_factory("hnsw", 10, 384) == "HNSW32"
    assert default_train_size(1_000_000, 4096, True) == 64 * 4096
    assert default_train_size(N, 128, True) == N  # PQ wants 9,984, capped by n
    assert default_train_size(1_000_000, 16, True) == 39 * 256


def test_drop_self_and_recall():
    ids = np.array([[5, 1, 2], [3, 4, 6], [7, -1, -1]])
    scores = np.array([[0.9, 0.8, 0.7], [0.9, 0.8, 0.7], [0.5, -np.inf, -np.inf]], np.float32)
    s, i = drop_self(scores, ids, np.array([5, 9, 7]), 2)
    assert i.tolist() == [[1, 2], [3, 4], [-1, -1]]
    assert s[0].tolist() == pytest.approx([0.8, 0.7]) and np.isneginf(s[2]).all()
    exact = np.array([[1, 2], [3, 8]])
    assert recall_at_k(np.array([[2, 1], [3, -1]]), exact, 2) == pytest.approx(0.75)
    assert recall_at_k(np.array([[2, 1], [3, -1]]), exact, 1) == pytest.approx(0.5)


def test_refine_exact_rescores_and_pads():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, 8)).astype(np.float16)
    q = rng.standard_normal((3, 8)).astype(np.float32)
    cand = np.array([[4, 9, 1, -1], [7, 0, 2, 3], [-1, -1, -1, -1]])  # distinct per row, as faiss returns
    s, i = refine_exact(q, cand, 2, lambda ids: x[ids])
    for r in range(2):
        c = np.unique(cand[r][cand[r] >= 0])
        ref = q[r] @ x[c].astype(np.float32).T
        assert i[r].tolist() == c[np.argsort(-ref)][:2].tolist()
        np.testing.assert_allclose(s[r], np.sort(ref)[::-1][:2], rtol=1e-6)
    assert i[2].tolist() == [-1, -1] and np.isneginf(s[2]).all()
    many = rng.standard_normal((5000, 8)).astype(np.float16)  # faiss's fp16 decoder path
    np.testing.assert_array_equal(to_float32(many), many.astype(np.float32))


def test_knob_chains_follow_structure():
    ivf = {"ivf": True, "nlist": 8, "quantizer": "flat", "hnsw": False}
    chains = knob_chains(ivf)
    assert len(chains) == 4 and [c["nprobe"] for c in chains[0]] == [1, 2, 4, 8]
    assert {c[0]["refine_factor"] for c in chains} == {0, 2, 4, 8}
    hnsw_q = knob_chains({**ivf, "quantizer": "hnsw"}, refine_grid=(0,), ef_grid=(4, 16))
    assert [[c["nprobe"] for c in chain] for chain in hnsw_q] == [[1, 2, 4], [1, 2, 4, 8]]
    hnsw = knob_chains({"ivf": False, "hnsw": True}, refine_grid=(0,))
    assert [c["ef_search"] for c in hnsw[0]] == [16, 32, 64, 128, 256, 512]
    assert knob_chains({"ivf": False, "hnsw": False}, refine_grid=(0, 2)) == [[{"refine_factor": 0}], [{"refine_factor": 2}]]


# -- against brute force ----------------------------------------------------------------------------
def test_flat_equals_exact(built, data, truth):
    s, i = built["flat"].search(data[1], 10)
    np.testing.assert_array_equal(i, truth[1])
    np.testing.assert_allclose(s, truth[0], rtol=1e-5, atol=1e-6)
    assert built["flat"].config["factory"] == "Flat" and built["flat"].config["metric"] == "inner_product"


@pytest.mark.parametrize(
    "preset, bound, refined_bound",
    # 4-byte PQ codes of 32-d vectors are coarse (measured: 0.32 unrefined, 0.89 with refine 8)
    [("hnsw", 0.95, 0.95), ("ivfpq", 0.25, 0.85), ("ivf-hnsw-pq", 0.25, 0.85), ("opq-ivfpq", 0.25, 0.85)],
)
def test_approximate_recall_and_refine(built, ds, data, truth, preset, bound, refined_bound):
    index, q = built[preset], data[1]
    recalls = [recall(index.search(q, 10, refine_factor=r)[1], truth[1]) for r in (0, 2, 8)]
    assert recalls[0] >= bound and recalls[-1] >= refined_bound
    assert recalls == sorted(recalls)  # refining more candidates never loses recall here
    s8, i8 = index.search(q, 10, refine_factor=8)
    # refined hits carry their exact inner products, best first
    x = ds.embeddings(i8.ravel()).astype(np.float32).reshape(len(q), 10, D)
    np.testing.assert_allclose(s8, np.einsum("qkd,qd->qk", x, q), rtol=1e-5, atol=1e-6)
    assert (np.diff(s8, axis=1) <= 0).all()


@pytest.mark.parametrize("preset", PRESET_NAMES)
@pytest.mark.parametrize("refine", [0, 4])
def test_allowed_mask_is_respected(built, ds, data, preset, refine):
    allowed = np.random.default_rng(3).random(N) < 0.3
    s, i = built[preset].search(data[1], 10, allowed=allowed, refine_factor=refine)
    hits = i[i >= 0]
    assert len(hits) > 0.9 * i.size and allowed[hits].all()
    assert np.isneginf(s[i < 0]).all()
    if preset == "flat":
        ref = exact_search(data[1], ds.embedding_shards, 10, allowed=allowed)
        np.testing.assert_array_equal(i, ref[1])
    nothing = np.zeros(N, dtype=bool)
    s, i = built[preset].search(data[1][:3], 5, allowed=nothing, refine_factor=refine)
    assert (i == -1).all() and np.isneginf(s).all()


@pytest.mark.parametrize("preset", ["ivfpq", "opq-ivfpq", "hnsw"])
def test_in_memory_refine_equals_memory_mapped_refine(built, ds, data, preset):
    """faiss's IndexRefine over an in-RAM SQfp16 copy returns the numpy memmap refine's hits and scores."""
    mapped = built[preset]
    in_ram = AnnIndex.open(ds, preset, refine_in_memory=True)
    allowed = np.random.default_rng(5).random(N) < 0.5
    for mask in (None, allowed):
        s0, i0 = mapped.search(data[1], 10, refine_factor=4, nprobe=8, allowed=mask)
        s1, i1 = in_ram.search(data[1], 10, refine_factor=4, nprobe=8, allowed=mask)
        np.testing.assert_allclose(s1, s0, rtol=1e-5, atol=1e-6)
        # ties aside (equal scores may come in either order), the same passages in the same order
        assert (i1 == i0).mean() > 0.995
        if mask is not None:
            assert allowed[i1[i1 >= 0]].all()
    assert in_ram._refiner[1].ntotal == N
    s, i = in_ram.search(data[1][:4], 10, refine_factor=0)  # unrefined searches skip the copy's path
    np.testing.assert_array_equal(i, mapped.search(data[1][:4], 10, refine_factor=0)[1])


@pytest.mark.parametrize("preset", ["ivf-hnsw-pq", "opq-ivfpq"])
def test_search_knobs_reach_the_inner_index(built, data, preset):
    """nprobe passed per call equals nprobe set on the inner IVF (through OPQ or an HNSW quantizer)."""
    index, q = built[preset], data[1][:50]
    raw = faiss.read_index(str(index.ds.root / "indexes" / preset / "index.faiss"))
    results = {}
    for nprobe in (1, 32):
        faiss.ParameterSpace().set_index_parameter(raw, "nprobe", nprobe)
        if index.structure["quantizer"] == "hnsw":
            faiss.ParameterSpace().set_index_parameter(raw, "quantizer_efSearch", max(64, nprobe))
        ref_s, ref_i = raw.search(q, 10)
        s, i = index.search(q, 10, nprobe=nprobe, ef_search=64, refine_factor=0)
        np.testing.assert_array_equal(i, ref_i)
        np.testing.assert_array_equal(s, ref_s)
        results[nprobe] = i
    assert (results[1] != results[32]).any()


def test_hnsw_ef_search_matters(built, data, truth):
    _, low = built["hnsw"].search(data[1], 10, ef_search=10)
    _, high = built["hnsw"].search(data[1], 10, ef_search=256)
    assert recall(high, truth[1]) >= recall(low, truth[1])
    assert recall(high, truth[1]) >= 0.99


@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_open_round_trip_is_identical(built, ds, data, preset):
    again = AnnIndex.open(ds, preset)
    assert again.load_mode == ("mmap" if again.structure["ivf"] else "mmap-codes")
    for refine in (0, 2):
        a = built[preset].search(data[1], 10, refine_factor=refine)
        b = again.search(data[1], 10, refine_factor=refine)
        np.testing.assert_array_equal(a[1], b[1])
        np.testing.assert_array_equal(a[0], b[0])
    cfg = again.config
    assert cfg["type"] == "faiss" and cfg["name"] == preset and cfg["dim"] == D and cfg["ntotal"] == N
    assert cfg["datastore"]["passages"] == N and cfg["preset"] == preset and cfg["seed"] == 0
    assert set(cfg["build"]["seconds"]) >= {"add", "write", "total"}
    assert AnnConfig.from_dict(cfg["config"]) == CONFIGS[preset]


def test_single_query_vector_and_empty_batch(built, data):
    s, i = built["flat"].search(data[1][0], 3)
    assert s.shape == i.shape == (1, 3)
    s, i = built["hnsw"].search(np.zeros((0, D), np.float32), 3)
    assert s.shape == i.shape == (0, 3)


# -- updates ----------------------------------------------------------------------------------------
def test_add_new_vectors_equals_full_build(tmp_path, data):
    x, q = data
    part = write_vector_datastore(tmp_path / "part", [x[:5000]], D, shard_rows=3000)
    full = write_vector_datastore(tmp_path / "full", [x], D, shard_rows=3000)
    small = Datastore.open(part)
    for p in ("flat", "ivfpq"):
        build_ann_index(small, p, CONFIGS[p], show_progress=False)
    before = AnnIndex.open(small, "ivfpq")  # (keep it alive: faiss sub-objects do not own their parent)
    centroids = faiss.extract_index_ivf(before.index).quantizer.reconstruct_n(0, 128)
    # append 3000 passages: the datastore's generation moves on and the indexes are stale
    write_vector_datastore(part, [x], D, shard_rows=3000, generation=1)
    grown = Datastore.open(part)
    with pytest.raises(DatastoreError, match="older than the datastore"):
        AnnIndex.open(grown, "flat")
    assert add_new_vectors(grown, "flat") == 3000 and AnnIndex.open(grown, "flat").ntotal == N
    assert add_new_vectors(grown, "flat") == 0
    reference = build_ann_index(Datastore.open(full), "flat", CONFIGS["flat"])
    a, b = AnnIndex.open(grown, "flat").search(q, 10), reference.search(q, 10)
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(a[0], b[0])
    add_new_vectors(grown, "ivfpq")
    ivf = AnnIndex.open(grown, "ivfpq")
    assert ivf.ntotal == N and ivf.config["updates"][0]["added"] == 3000
    np.testing.assert_array_equal(faiss.extract_index_ivf(ivf.index).quantizer.reconstruct_n(0, 128), centroids)
    assert (ivf.search(q, 10, refine_factor=8)[1] >= 5000).any()  # the new passages are found


def test_add_new_vectors_refuses_rewritten_datastore(tmp_path, data):
    x = data[0][:3000]
    root = write_vector_datastore(tmp_path / "ds", [x], D)
    build_ann_index(Datastore.open(root), "flat", CONFIGS["flat"])
    write_vector_datastore(root, [x[::-1], x[:10]], D, generation=1)  # same count + 10, other order
    with pytest.raises(DatastoreError, match="rewritten or compacted"):
        add_new_vectors(Datastore.open(root), "flat")


# -- tuning, evaluation, planning -------------------------------------------------------------------
def test_tune_reaches_target_and_stores_knobs(ds, built):
    result = tune_ann_index(ds, "ivfpq", target_recall=0.9, k=10, n_queries=NQ, seed=1)
    assert result["reached"] and result["chosen"]["recall"] >= 0.9
    assert all({"nprobe", "refine_factor", "recall", "qps"} <= set(row) for row in result["table"])
    feasible = [r for r in result["table"] if r["recall"] >= 0.9]
    assert result["chosen"]["qps"] == max(r["qps"] for r in feasible)
    index = AnnIndex.open(ds, "ivfpq")
    assert index.defaults["nprobe"] == result["chosen"]["nprobe"]
    assert index.defaults["refine_factor"] == result["chosen"]["refine_factor"]
    assert index.config["tuning"]["target_recall"] == 0.9
    report = evaluate_ann_index(ds, "ivfpq", n_queries=NQ, seed=1, n_single=20)
    assert report["recall@10"] == pytest.approx(result["chosen"]["recall"])  # same queries, stored knobs


def test_tune_unreachable_target_keeps_best_recall(ds, built, caplog):
    result = tune_ann_index(ds, "hnsw", target_recall=1.01, k=10, n_queries=50, seed=2)
    assert not result["reached"] and "no setting reaches" in caplog.text
    assert result["chosen"]["recall"] == max(r["recall"] for r in result["table"])
    assert AnnIndex.open(ds, "hnsw").defaults["ef_search"] == result["chosen"]["ef_search"]


def test_evaluate_reports_recall_speed_and_size(ds, built):
    flat = evaluate_ann_index(ds, "flat", n_queries=100, n_single=10)
    assert flat["recall@1"] == flat["recall@10"] == flat["recall@100"] == 1.0
    assert flat["qps_batched"] > 0 and flat["qps_single"] > 0
    assert 4 * D <= flat["bytes_per_vector"] < 4 * D + 1  # float32 vectors plus a small header
    pq = evaluate_ann_index(ds, "ivf-hnsw-pq", n_queries=100, n_single=10, nprobe=8, refine_factor=0)
    assert pq["search"]["nprobe"] == 8 and pq["bytes_per_vector"] < 4 * D
    assert 0 < pq["recall@1"] <= 1 and 0 < pq["recall@100"] <= 1


def test_plan_index_fits_budget():
    gib = 2**30
    assert plan_index(100_000, 384, 8 * gib).preset == "flat"
    plan = plan_index(1_000_000, 384, 4 * gib)  # above FLAT_MAX_N: HNSW (1.8 GB) is the most accurate
    assert plan.preset == "hnsw" and plan.factory == "HNSW32" and plan.est_memory_bytes <= 4 * gib
    plan = plan_index(1_000_000, 384, 200 * 2**20)
    assert plan.factory == "IVF4096_HNSW32,PQ64np" and plan.est_memory_bytes <= 200 * 2**20
    assert 70e6 < plan.est_memory_bytes < 85e6 and plan.est_build_seconds > 0 and "did not fit" in plan.reason
    plan = plan_index(1_000_000, 384, 40 * 2**20)  # 64-byte codes do not fit: m halves
    assert plan.factory.endswith("PQ16np") and plan.est_memory_bytes <= 40 * 2**20
    assert plan_index(50_000, 384, 30 * 2**20).preset == "opq-ivfpq"
    assert estimate_memory("hnsw", 10, 384) == 10 * (4 * 384 + 268)
    with pytest.raises(ConfigError, match="no index .* fits"):
        plan_index(1_000_000, 384, 2**20)
    with pytest.raises(ConfigError):
        plan_index(0, 384, gib)


def test_auto_factory_builds_the_plan(ds):
    index = build_ann_index(ds, "auto", AnnConfig("auto", memory_budget_bytes=2**30), show_progress=False)
    assert index.config["factory"] == "Flat" and index.config["plan"]["preset"] == "flat"


# -- bad input --------------------------------------------------------------------------------------
def test_bad_factories(ds):
    with pytest.raises(ConfigError, match="not a preset .*flat, hnsw, ivfpq.*could not parse"):
        build_ann_index(ds, "x", AnnConfig("IVFx,PQ"))
    with pytest.raises(ConfigError, match="multiple of the number of subquantizers"):
        build_ann_index(ds, "x", AnnConfig("IVF16,PQ7"))
    with pytest.raises(ConfigError, match="at least 256 training vectors"):
        build_ann_index(ds, "x", AnnConfig("ivfpq", train_size=100))
    with pytest.raises(ConfigError, match="add_block_rows must be an integer"):
        build_ann_index(ds, "x", AnnConfig("flat", add_block_rows=0))
    assert not (ds.root / "indexes" / "x").exists()


def test_bad_search_arguments(built):
    index = built["ivfpq"]
    q = np.ones((2, D), np.float32)
    for k in (0, -1, 2.5):
        with pytest.raises(ConfigError, match="positive"):
            index.search(q, k)
    with pytest.raises(ConfigError, match="dimension 7"):
        index.search(np.ones((2, 7), np.float32), 3)
    with pytest.raises(ConfigError, match="nprobe"):
        index.search(q, 3, nprobe=0)
    with pytest.raises(ConfigError, match="refine_factor"):
        index.search(q, 3, refine_factor=-1)
    with pytest.raises(ConfigError, match="allowed mask has 5"):
        index.search(q, 3, allowed=np.ones(5, bool))
    with pytest.raises(ConfigError, match="boolean"):
        index.search(q, 3, allowed=np.ones(N, np.int64))


def test_bad_indexes(tmp_path, ds, built, data):
    with pytest.raises(DatastoreError, match="no index named 'nope'"):
        AnnIndex.open(ds, "nope")
    with pytest.raises(DatastoreError, match="exists"):
        build_ann_index(ds, "flat", CONFIGS["flat"])
    # the same directory opened under another encoder, or holding vectors of another dimension
    copy = tmp_path / "copy"
    shutil.copytree(ds.root, copy)
    write_vector_datastore(copy, [data[0]], D, shard_rows=3000, fingerprint="other-encoder")
    with pytest.raises(DatastoreError, match="another encoder"):
        AnnIndex.open(Datastore.open(copy), "flat")
    write_vector_datastore(copy, [np.ones((N, 16), np.float16)], 16)
    with pytest.raises(DatastoreError, match="dimension"):
        AnnIndex.open(Datastore.open(copy), "flat")
    # a config.json without its index file
    write_vector_datastore(copy, [data[0]], D, shard_rows=3000)
    (copy / "indexes" / "hnsw" / "index.faiss").unlink()
    with pytest.raises(DatastoreError, match="missing index.faiss"):
        AnnIndex.open(Datastore.open(copy), "hnsw")
    cfg = json.loads((copy / "indexes" / "flat" / "config.json").read_text())
    assert cfg["datastore"]["encoder_fingerprint"] == "synthetic"


def test_real_datastore_integration(tmp_path, encoder):
    corpus = write_jsonl(tmp_path / "c.jsonl", corpus_records(n_docs=6))
    config = BuildConfig(chunk=ChunkConfig(max_words=40, min_words=5), shard_size=64)
    ds = build_datastore([corpus], tmp_path / "ds", config, encoder=encoder)
    q = ds.encode_queries(["whale ship captain", "kernel memory thread"])
    flat = build_ann_index(ds, "flat", AnnConfig("flat"))
    hnsw = build_ann_index(ds, "hnsw", AnnConfig("hnsw"))
    ref_s, ref_i = ds.search_vectors(q, 5)
    for index in (flat, hnsw):
        s, i = index.search(q, 5)
        np.testing.assert_array_equal(i, ref_i)
        np.testing.assert_allclose(s, ref_s, rtol=1e-5, atol=1e-6)
    assert [h.passage_id for h in ds.hits(*[a[0] for a in flat.search(q, 3)])] == ref_i[0, :3].tolist()
