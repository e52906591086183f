"""Builds split into parts: what a distributed build runs, in one process here or on Ray (`relm.distributed`).

Two phases, so that the result is byte-identical to `build_datastore` however the work is split:

1. **Parts.** Part r reads and chunks `files[r::world_size]` into a part datastore of text without vectors
   (`layout.DEFERRED`), under `out/.build/parts/part-RRRRR`, resumable shard by shard like any build.
2. **Assemble, then encode.** `assemble` merges the parts in input order (refusing a document id that
   two parts share) into the datastore's files, cut into the one-process build's shards. Each shard's
   batch plan (`encoders.batching.batch_plan`, the one-process build's batches) is cut into *encode jobs*
   of whole batches that any worker may encode; a job's vectors are one file under `out/.build/vectors/`
   (the unit of resumption). Each shard's vectors are then put back in passage order.

The batches are the one-process build's batches, so the vectors are its vectors: identity does not rest
on the encoder being insensitive to what it is batched with. Parallelism is over batches, not files, so
one large input file encodes on every worker. Stats, then the manifest (last); `.build/` is removed. A
build killed anywhere reruns to the same bytes: finished parts and finished jobs are kept.
"""

from __future__ import annotations

import logging
import resource
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..artifacts import load_npy, read_json, save_npy_atomic, write_json_atomic
from ..config import BuildConfig
from ..corpus.readers import InputFile
from ..encoders.batching import batch_plan, encode_batches
from ..errors import DatastoreError
from ..progress import progress
from . import layout as L
from .lock import writer_lock

log = logging.getLogger(__name__)
PASSAGES_PER_JOB = 1024  # an encode job: 16 batches of 64, a few seconds of one CPU core, far less of a GPU


@dataclass(frozen=True)
class PartJob:
    """Phase 1 of a split build: the files part `rank` reads (files[rank::world_size]) and the directory its
    part datastore (text, no vectors) is built in."""

    rank: int
    where: Path
    files: tuple[InputFile, ...]
    config: BuildConfig

    @property
    def bytes(self) -> int:
        return sum(f.path.stat().st_size for f in self.files)


@dataclass(frozen=True)
class EncodeJob:
    """Phase 2: consecutive batches of one shard's batch plan, and the file their float16 vectors go to
    (rows in batch order)."""

    shard: int
    index: int
    batches: tuple[tuple[str, ...], ...]
    normalize: bool
    where: Path

    @property
    def passages(self) -> int:
        return sum(len(b) for b in self.batches)


def build_part(job: PartJob, *, show_progress: bool | None = None, encoder=None) -> dict[str, Any]:
    """Build (or resume, or find finished) one part datastore; its manifest's counts. Runs in any process
    that sees `job.where` (a Ray worker on a shared filesystem), under the part's own writer lock. The
    encoder is needed for its tokenizer (passage token budgets, truncation counts) and its identity."""
    from .build import _Builder, _plan, _prepare_output

    job.where.mkdir(parents=True, exist_ok=True)
    with writer_lock(job.where):
        if not _prepare_output(job.where, _plan(list(job.files), job.config), False):
            _Builder(job.where, list(job.files), job.config, show_progress, encoder, encode=False).run()
    return read_json(job.where / L.MANIFEST)["counts"]


def encode_job(job: EncodeJob, encoder) -> int:
    """Encode one job's batches (one `encode` call per batch) into `job.where`; the passages encoded."""
    save_npy_atomic(job.where, encode_batches(encoder, job.batches, normalize=job.normalize))
    return job.passages


def encode_jobs(texts: Sequence[str], shard: int, *, batch_size: int, normalize: bool, where: Path,
                passages_per_job: int = PASSAGES_PER_JOB) -> tuple[list[EncodeJob], np.ndarray]:
    """One shard's encode jobs (its batch plan cut every `passages_per_job` passages, whole batches) and the
    plan's row order (the passage index of each vector row, jobs in order)."""
    plan = batch_plan(texts, batch_size)
    per_job = max(1, passages_per_job // batch_size)
    jobs = [EncodeJob(shard, j, tuple(tuple(texts[i] for i in b) for b in plan[a : a + per_job]), normalize,
                      where / L.shard_name(shard) / f"job-{j:05d}.npy")
            for j, a in enumerate(range(0, len(plan), per_job))]
    order = np.concatenate(plan) if plan else np.zeros(0, np.int64)
    return jobs, order


def gather_shard(jobs: Sequence[EncodeJob], order: np.ndarray, dim: int) -> np.ndarray:
    """A shard's float16 vectors in passage order, from its finished jobs' files."""
    out = np.empty((len(order), dim), dtype=np.float16)
    row = 0
    for job in jobs:
        rows = load_npy(job.where, mmap=False)
        if rows.shape != (job.passages, dim) or rows.dtype != np.float16:
            raise DatastoreError(f"{job.where}: vectors of shape {rows.shape} ({rows.dtype}) where "
                                 f"({job.passages}, {dim}) float16 is expected; delete it and rerun the build")
        out[order[row : row + job.passages]] = rows
        row += job.passages
    return out


class Workers(Protocol):
    """Who runs a split build's jobs: `LocalWorkers` here, one after another; `relm.distributed` on Ray.
    Each calls `done(job, result)` as each job finishes, and raises the first failure once the jobs
    already running have finished (their work is kept for the rerun)."""

    def build_parts(self, jobs: list[PartJob], done: Callable[[PartJob, dict], None]) -> None: ...

    def encode(self, jobs: list[EncodeJob], done: Callable[[EncodeJob, int], None]) -> None: ...


class LocalWorkers:
    """The jobs in this process, one after another, with one encoder (the given one, or loaded once)."""

    def __init__(self, config: BuildConfig, encoder=None):
        self.config, self._encoder = config, encoder

    @property
    def encoder(self):
        if self._encoder is None:
            from ..encoders import load_encoder

            self._encoder = load_encoder(self.config.encoder)
        return self._encoder

    def build_parts(self, jobs, done):
        for job in jobs:
            done(job, build_part(job, show_progress=False, encoder=self.encoder))

    def encode(self, jobs, done):
        for job in jobs:
            done(job, encode_job(job, self.encoder))


class _Progress:
    """One bar and log lines every 10 s: done/total, rate and ETA."""

    def __init__(self, total: int, done: int, desc: str, unit: str, show_progress: bool | None):
        self.total, self.done, self.start_done, self.desc, self.unit = total, done, done, desc, unit
        self.t0 = self.last_log = time.perf_counter()
        self.bar = progress(total=total, initial=done, desc=desc, unit=unit, unit_scale=True, enabled=show_progress)

    def add(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        rate = (self.done - self.start_done) / max(now - self.t0, 1e-9)
        eta = (self.total - self.done) / max(rate, 1e-9)
        self.bar.update(n)
        self.bar.set_postfix_str(f"{rate:,.1f} {self.unit}/s, ETA {eta:,.0f} s")
        if now - self.last_log >= 10 or self.done >= self.total:
            self.last_log = now
            log.info("%s: %s of %s %s (%d%%), %.1f %s/s, ETA %.0f s", self.desc, f"{self.done:,}",
                     f"{self.total:,}", self.unit, 100 * self.done // max(self.total, 1), rate, self.unit, eta)

    def close(self) -> None:
        self.bar.close()


def build_in_parts(
    inputs: list[str | Path],
    out: str | Path,
    config: BuildConfig = BuildConfig(),
    *,
    world_size: int,
    show_progress: bool | None = None,
    encoder=None,
    workers: Workers | None = None,
    passages_per_job: int = PASSAGES_PER_JOB,
):
    """The build split into `world_size` parts and encode jobs (module docstring), run by `workers`
    (default: `LocalWorkers`, in this process); returns the opened Datastore, byte-identical to
    `build_datastore` on the same inputs (stats.json, which holds timings, aside)."""
    from .assemble import assemble
    from .build import _files_and_plan, _prepare_output, merge_encoder_input
    from .store import Datastore

    if not isinstance(world_size, int) or world_size < 1:
        raise DatastoreError(f"world_size must be a positive integer, got {world_size!r}")
    out = Path(out)
    files, plan = _files_and_plan(inputs, out, config)
    workers = workers or LocalWorkers(config, encoder)
    seconds: dict[str, float] = {}
    t_start = time.perf_counter()
    with writer_lock(out):
        if _prepare_output(out, plan, False):
            return Datastore.open(out)
        jobs = [PartJob(rank, out / L.STAGING / "parts" / f"part-{rank:05d}", tuple(files[rank::world_size]), config)
                for rank in range(min(world_size, len(files)))]
        finished = [job for job in jobs if (job.where / L.MANIFEST).exists()]
        bar = _Progress(sum(j.bytes for j in jobs), sum(j.bytes for j in finished), "chunk", "B", show_progress)
        try:
            workers.build_parts([j for j in jobs if j not in finished], lambda job, _: bar.add(job.bytes))
        finally:
            bar.close()
        seconds["parts"] = time.perf_counter() - t_start

        t0 = time.perf_counter()
        parts: dict[int, Datastore] = {job.rank: Datastore.open(job.where) for job in jobs}
        segments = _segments_in_input_order(files, parts, world_size)
        read = _merge_read_stats([parts[r].manifest["build"]["read"] for r in sorted(parts)])
        build = {"plan": plan, "read": read}
        counted = merge_encoder_input([parts[r].manifest["build"].get("encoder_input") for r in sorted(parts)])
        if counted is not None:
            build["encoder_input"] = counted
        manifest = assemble(out, segments, shard_size=config.shard_size, build=build, inputs=plan["inputs"],
                            check_ids=True, vectors=False).to_json()
        seconds["assemble"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        encoded = _encode_shards(out, manifest, config, workers, passages_per_job, show_progress)
        seconds["encode"] = time.perf_counter() - t0

        c = manifest["counts"]
        seconds["total"] = max(time.perf_counter() - t_start, 1e-9)
        write_json_atomic(out / L.STATS, {
            "counts": c, "read": read, "seconds": {k: round(v, 4) for k, v in seconds.items()},
            "encoder_input": counted, "parts": len(parts), "encoded_passages": encoded,
            "throughput": {"passages_per_s": c["passages"] / seconds["total"],
                           "encode_passages_per_s": encoded / max(seconds["encode"], 1e-9)},
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})
        write_json_atomic(out / L.MANIFEST, manifest)
        shutil.rmtree(out / L.STAGING)
    return Datastore.open(out)


def _encode_shards(out: Path, manifest: dict[str, Any], config: BuildConfig, workers: Workers,
                   passages_per_job: int, show_progress: bool | None) -> int:
    """Phase 2: every shard of the assembled datastore encoded by `workers`, job by job, and written; the
    passages encoded now (jobs found finished are not encoded again)."""
    from .store import Datastore

    view = Datastore.view(out, {**manifest, L.DEFERRED: True})  # its text, to read the encoder inputs from
    where, dim = out / L.STAGING / "vectors", int(manifest["embeddings"]["dim"])
    shards = manifest["embeddings"]["shards"]
    found = sum(load_npy(p).shape[0] for p in where.glob("shard-*/job-*.npy"))  # finished before a kill
    bar = _Progress(int(manifest["counts"]["passages"]), found, "encode", "passages", show_progress)
    encoded = 0

    def done(job: EncodeJob, n: int) -> None:
        nonlocal encoded
        encoded += n
        bar.add(n)

    try:
        for i, s in enumerate(shards):  # the text and a sort per shard, then its jobs on the workers
            texts = view.passage_input_texts(range(s["start"], s["start"] + s["rows"]))
            jobs, order = encode_jobs(texts, i, batch_size=config.batch_size, normalize=config.encoder.normalize,
                                      where=where, passages_per_job=passages_per_job)
            workers.encode([j for j in jobs if not j.where.exists()], done)
            save_npy_atomic(out / s["file"], gather_shard(jobs, order, dim))
    finally:
        bar.close()
    return encoded


def _segments_in_input_order(files: list[InputFile], parts: dict[int, Any], world_size: int) -> list:
    """Runs of documents, one per input file, in the order one process reads them (file i is in part
    i % world_size, whose documents are in its own file order)."""
    from .assemble import Segment

    cursor = dict.fromkeys(parts, 0)
    out = []
    for i, f in enumerate(files):
        rank = i % world_size
        ds = parts[rank]
        start = j = cursor[rank]
        while j < ds.n_documents:
            source = ds.document(j)["source"]
            if source != f.display and not source.startswith(f.display + ":"):
                break
            j += 1
        cursor[rank] = j
        if j > start:
            out.append(Segment(ds, np.arange(start, j, dtype=np.int64)))
    for rank, ds in parts.items():
        if cursor[rank] != ds.n_documents:
            raise DatastoreError(f"internal: part {rank} has documents from no input file in its order")
    return out


def _merge_read_stats(stats: list[dict[str, Any]]) -> dict[str, Any]:
    skipped: dict[str, int] = {}
    for s in stats:
        for k, v in s["skipped"].items():
            skipped[k] = skipped.get(k, 0) + v
    return {
        "files": sum(s["files"] for s in stats),
        "documents": sum(s["documents"] for s in stats),
        "skipped": dict(sorted(skipped.items())),
        "skipped_total": sum(s["skipped_total"] for s in stats),
        "skipped_examples": [e for s in stats for e in s["skipped_examples"]][:20],
        "non_finite_nulled": sum(s.get("non_finite_nulled", 0) for s in stats),
    }
