"""relm on Ray (relm.distributed), on a local Ray started once for this module: the distributed build is
byte-identical to the local one and resumes from its finished parts, per-shard index builds equal the
one-pass build, sharded search through shard actors equals local sharded and exact search, a frozen or
killed shard actor is reported within the timeout and restarted, and `relm add` reaches the shard actors."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import HashEncoder, build_hash_datastore, corpus_records, make_text, write_jsonl

ray = pytest.importorskip("ray")

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray for the module (a few seconds to start): 2 CPUs, no dashboard, a small object store;
    workers import relm from this tree and the tests' encoders from tests/."""
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(HERE.parent / "src"), str(HERE), *([old] if old else [])])
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 2**20, log_to_driver=False)
    yield ray
    ray.shutdown()
    if old is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = old


@pytest.fixture(scope="module")
def sharded_ds(tmp_path_factory):
    from relm.retrieval.sharding import ShardConfig, build_sharded_index

    ds = build_hash_datastore(tmp_path_factory.mktemp("sharded"), n_docs=200)
    build_sharded_index(ds, "km", ShardConfig(by="kmeans", n_shards=4))
    return ds


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != "stats.json"}


class CountingEncoder(HashEncoder):
    """HashEncoder that appends one line per encode call to a file (calls made in Ray workers are counted
    too) and fails on a text containing `poison`, like an encoder killed midway."""

    def __init__(self, log: Path, poison: str | None = None):
        self.log, self.poison = str(log), poison

    def encode(self, texts, **kw):
        if self.poison is not None and any(self.poison in t for t in texts):
            raise RuntimeError("encoder killed")
        with open(self.log, "a") as f:
            f.write(f"{len(texts)}\n")
        return super().encode(texts, **kw)


def test_ray_build_is_byte_identical_and_resumes_from_finished_jobs(tmp_path, ray_session):
    from relm import BuildConfig, ChunkConfig, build_datastore
    from relm.distributed.build import ray_build

    records = corpus_records(n_docs=16, base_words=40)
    records[5]["text"] += " zzpoison"
    for i in range(4):
        write_jsonl(tmp_path / "in" / f"f{i}.jsonl", records[i::4])
    config = BuildConfig(chunk=ChunkConfig(max_words=16, min_words=4), shard_size=7, batch_size=2)
    one = build_datastore([tmp_path / "in"], tmp_path / "one", config, encoder=HashEncoder())

    log = tmp_path / "calls.log"
    with pytest.raises(Exception, match="encoder killed"):
        ray_build([tmp_path / "in"], tmp_path / "ray", config, parts=2, encode_actors=2, passages_per_job=2,
                  encoder=CountingEncoder(log, poison="zzpoison"))
    staging = tmp_path / "ray" / ".build"
    assert all((staging / "parts" / f"part-0000{r}" / "manifest.json").exists() for r in (0, 1))  # parts done
    finished = sum(len(np.load(f)) for f in staging.glob("vectors/shard-*/job-*.npy"))  # passages kept
    ds = ray_build([tmp_path / "in"], tmp_path / "ray", config, parts=2, encode_actors=2, passages_per_job=2,
                   encoder=CountingEncoder(log))
    encoded = json.loads((ds.root / "stats.json").read_text())["encoded_passages"]
    assert 0 < finished and encoded == len(one) - finished  # the rerun encoded only the jobs not done
    assert tree_bytes(one.root) == tree_bytes(ds.root) and not (ds.root / ".build").exists()


def test_ray_build_with_minilm_is_byte_identical_to_the_local_build(tmp_path, ray_session, encoder):
    """A real transformer, whose vectors depend on what a text is batched with: the Ray build's actors
    (each loading MiniLM itself) encode the one-process build's planned batches and get its exact bytes."""
    from relm import BuildConfig, ChunkConfig, build_datastore
    from relm.distributed.build import ray_build

    records = corpus_records(n_docs=30, base_words=30)
    for i, r in enumerate(records):
        r["text"] = " ".join(r["text"].split()[: 10 + 3 * (i % 7)])
    write_jsonl(tmp_path / "in" / "big.jsonl", records[:26])
    write_jsonl(tmp_path / "in" / "small.jsonl", records[26:])
    config = BuildConfig(chunk=ChunkConfig(max_words=20, min_words=4), shard_size=20, batch_size=4)
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the actors' thread count: torch's float sums depend on it
    try:
        one = build_datastore([tmp_path / "in"], tmp_path / "one", config, encoder=encoder)
    finally:
        torch.set_num_threads(threads)
    ds = ray_build([tmp_path / "in"], tmp_path / "ray", config, parts=2, encode_actors=2, passages_per_job=8)
    assert len(ds) == len(one) > 20 and tree_bytes(one.root) == tree_bytes(ds.root)


def test_per_shard_index_builds_on_ray_equal_the_one_pass_build(tmp_path, ray_session):
    from relm.distributed.index import ray_build_sharded_index
    from relm.retrieval.sharding import ShardConfig, build_sharded_index

    ds = build_hash_datastore(tmp_path, n_docs=150)
    for name, config in (("km", ShardConfig(by="kmeans", n_shards=4)),
                         ("ivf", ShardConfig(by="lsh", n_shards=2, factory="IVF4,Flat", train_size=400))):
        local = build_sharded_index(ds, name, config)
        remote = ray_build_sharded_index(ds, name + "-ray", config)
        assert local.config["shard_sizes"] == remote.config["shard_sizes"]
        for s in range(local.n_shards):
            a, b = (local.path / f"shard-{s:04d}.faiss").read_bytes(), (remote.path / f"shard-{s:04d}.faiss").read_bytes()
            assert a == b, (name, s)


def _queries(ds, n=24):
    return HashEncoder().encode([ds.passage(i) + " q" for i in range(0, len(ds), len(ds) // n)][:n])


def test_ray_sharded_search_equals_local_sharded_and_exact(sharded_ds, ray_session):
    from relm.distributed import RayConfig
    from relm.distributed.search import RayShards
    from relm.retrieval.retriever import Retriever, RetrieverConfig, SearchOptions

    ds, q = sharded_ds, _queries(sharded_ds)
    shards = RayShards(RayConfig(shard_timeout_s=20))
    try:
        for probe in (None, 2):
            config = RetrieverConfig("sharded", index="km", probe_shards=probe)
            remote, local = shards.retriever(ds, config), Retriever(ds, config)
            for opts in (SearchOptions(k=10), SearchOptions(k=5, domains=("beta",))):
                a, b = remote.search_vectors(q, opts), local.search_vectors(q, opts)
                np.testing.assert_array_equal(a[1], b[1])
                np.testing.assert_array_equal(a[0], b[0])
        exact = Retriever(ds, RetrieverConfig("exact")).search_vectors(q, SearchOptions(k=10))
        full = shards.retriever(ds, RetrieverConfig("sharded", index="km")).search_vectors(q, SearchOptions(k=10))
        np.testing.assert_array_equal(full[1], exact[1])
        np.testing.assert_allclose(full[0], exact[0], atol=1e-5)
    finally:
        shards.close()


def test_a_frozen_or_killed_shard_actor_is_reported_in_time_and_restarted(sharded_ds, ray_session):
    from relm.distributed import RayConfig
    from relm.distributed.search import RayShards
    from relm.errors import DatastoreError
    from relm.retrieval import partial as partial_results
    from relm.retrieval.retriever import Retriever, RetrieverConfig, SearchOptions
    from relm.retrieval.sharding import ShardedIndex

    ds, q = sharded_ds, _queries(sharded_ds)
    config = RetrieverConfig("sharded", index="km")
    expected = Retriever(ds, config).search_vectors(q, SearchOptions(k=10))
    owner = ShardedIndex.open(ds, "km").shards[1]
    shard1 = set(owner.search(q, len(ds))[1].ravel().tolist()) - {-1}
    # warm with a long timeout (8 actor processes starting on 2 loaded cores can take a minute), then search
    # with 5 s: long enough for the healthy shards, short enough to show the bound
    fast = {"partial": RayConfig(shard_timeout_s=5.0, on_shard_failure="partial"), "strict": RayConfig(shard_timeout_s=5.0)}
    partial = RayShards(dataclasses.replace(fast["partial"], shard_timeout_s=180.0))
    strict = RayShards(dataclasses.replace(fast["strict"], shard_timeout_s=180.0))
    try:
        r_partial, r_strict = partial.retriever(ds, config), strict.retriever(ds, config)
        for r in (r_strict, r_partial):  # every actor has started and loaded its shard before one is frozen
            np.testing.assert_array_equal(r.search_vectors(q, SearchOptions(k=10))[1], expected[1])
        assert r_partial.describe()["partial_searches"] == 0
        partial.config, strict.config = fast["partial"], fast["strict"]
        warm_partials = 0
        pids = [ray.get(pool[1].pid.remote()) for pool in (partial._actors.values(), strict._actors.values())
                for pool in [list(pool)[0]]]
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)  # a slow shard: alive, never answering
        t0 = time.monotonic()
        with partial_results.recording() as left_out:
            s, i = r_partial.search_vectors(q, SearchOptions(k=10))
        assert time.monotonic() - t0 < 20
        assert left_out == ["index km shard 1 did not answer within 5 s"]  # what `relm serve` flags
        assert shard1.isdisjoint(i.ravel().tolist()) and (i != -1).all()
        assert r_partial.describe()["partial_searches"] == warm_partials + 1
        t0 = time.monotonic()
        with pytest.raises(DatastoreError, match="shard 1 did not answer within 5 s"):
            r_strict.search_vectors(q, SearchOptions(k=10))
        assert time.monotonic() - t0 < 20
        for pid in pids:
            os.kill(pid, signal.SIGKILL)  # now dead: Ray restarts the actor, which reloads its shard
        deadline = time.monotonic() + 60
        while True:
            try:
                got = r_strict.search_vectors(q, SearchOptions(k=10))
                break
            except DatastoreError:
                assert time.monotonic() < deadline, "the killed shard actor was not restarted"
                time.sleep(0.5)
        np.testing.assert_array_equal(got[1], expected[1])
    finally:
        partial.close()
        strict.close()


def test_relm_add_reaches_the_shard_actors_that_own_the_new_passages(tmp_path, ray_session):
    from relm.datastore import update as U
    from relm.distributed import RayConfig
    from relm.distributed.search import RayShards
    from relm.retrieval.retriever import RetrieverConfig, SearchOptions
    from relm.retrieval.sharding import ShardConfig, build_sharded_index, shard_generations

    ds = build_hash_datastore(tmp_path, n_docs=90)
    build_sharded_index(ds, "dom", ShardConfig(by="domain"))
    shards = RayShards(RayConfig(shard_timeout_s=20))
    try:
        r = shards.retriever(ds, RetrieverConfig("sharded", index="dom"))
        n_before = len(r.ds)
        extra = write_jsonl(tmp_path / "extra.jsonl", [{"id": "new", "text": make_text(999, 24), "domain": "beta"},
                                                       {"id": "new2", "text": make_text(998, 24), "domain": "delta"}])
        U.add_documents(ds, [extra], encoder=HashEncoder())
        q = HashEncoder().encode([r.ds.passage(0)])
        assert r.search_vectors(q, SearchOptions(k=len(ds)))[1].max() < n_before  # not yet: old revision
        assert r.refresh()
        r.ds._encoder = HashEncoder()
        index = r._state.backend.index
        assert shard_generations(index.config) == [0, 1, 0, 1]  # beta grew, delta is new; alpha, gamma untouched
        new = HashEncoder().encode([r.ds.passage(len(r.ds) - 1), r.ds.passage(n_before)])
        ids = r.search_vectors(new, SearchOptions(k=1))[1][:, 0]
        assert ids.tolist() == [len(r.ds) - 1, n_before]
    finally:
        shards.close()


def test_relm_search_with_ray_prints_what_local_search_prints(sharded_ds, ray_session, capsys, monkeypatch):
    from relm.cli import main
    from relm.datastore import Datastore

    monkeypatch.setattr(Datastore, "encoder", lambda self: HashEncoder())

    args = [str(sharded_ds.root), "--queries", str(_query_file(sharded_ds)), "--retriever", "sharded", "--index", "km",
            "--format", "trec", "-k", "5", "--probe-shards", "2"]
    assert main(["search", *args]) == 0
    local = capsys.readouterr().out
    assert main(["search", *args, "--ray", "--shard-timeout", "20"]) == 0
    assert capsys.readouterr().out == local and local.count("\n") == 5 * 3
    assert main(["search", *args, "--ray-address", "auto"]) == 2
    assert "--ray-address needs --ray" in capsys.readouterr().err
    assert main(["index", str(sharded_ds.root), "--name", "km-cli", "--shards", "4", "--ray"]) == 0
    a, b = (sharded_ds.root / "indexes" / "km", sharded_ds.root / "indexes" / "km-cli")
    assert all((a / f"shard-{s:04d}.faiss").read_bytes() == (b / f"shard-{s:04d}.faiss").read_bytes() for s in range(4))
    assert main(["index", str(sharded_ds.root), "--name", "x", "--ray"]) == 2
    assert "--ray builds sharded indexes" in capsys.readouterr().err


def _query_file(ds) -> Path:
    path = ds.root.parent / "queries.tsv"
    path.write_text("".join(f"q{i}\t{ds.passage(i * 7)}\n" for i in range(3)))
    return path


def test_serve_with_ray_answers_as_local_and_follows_an_add(tmp_path, ray_session):
    pytest.importorskip("fastapi")
    from relm.datastore import update as U
    from relm.retrieval.options import SearchOptions
    from relm.retrieval.sharding import ShardConfig, build_sharded_index
    from relm.serve import ServeConfig, ServerState

    ds = build_hash_datastore(tmp_path, n_docs=60)
    build_sharded_index(ds, "km", ShardConfig(by="kmeans", n_shards=3))
    retriever = {"kind": "sharded", "index": "km"}
    local = ServerState(ServeConfig(str(ds.root), retriever=retriever, lm=None), datastore=ds)
    remote = ServerState(ServeConfig(str(ds.root), retriever=retriever, lm=None, refresh_s=0,
                                     ray={"shard_timeout_s": 20}), datastore=ds)
    local.load(), remote.load()
    try:
        texts = [ds.passage(3), ds.passage(40)]
        key = ("sharded", SearchOptions(k=5))
        assert remote.search_rows(key, texts) == local.search_rows(key, texts)
        assert remote.info()["serving"]["retrievers"]["sharded"]["ray"] is True
        extra = write_jsonl(tmp_path / "extra.jsonl", [{"id": "new", "text": make_text(999, 24)}])
        U.add_documents(ds, [extra], encoder=HashEncoder())
        remote.refresh(force=True)
        new = remote.ds.passage(len(remote.ds) - 1)
        assert remote.search_rows(key, [new])[0][0]["doc_id"] == "new"
    finally:
        local.close(), remote.close()


def test_without_ray_installed_the_flags_say_how_to_get_it(monkeypatch):
    import sys

    from relm.distributed.runtime import RAY_MISSING, RayConfig, import_ray
    from relm.errors import ConfigError

    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` sees when Ray is not installed
    with pytest.raises(ConfigError, match=r"install relm\[ray\]") as e:
        import_ray()
    assert str(e.value) == RAY_MISSING
    with pytest.raises(ConfigError, match="on_shard_failure"):
        RayConfig(on_shard_failure="ignore")
