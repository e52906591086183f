"""`ray_build`: `relm build --ray`, a build split into parts (`datastore.parts`) run by a pool of Ray actors.

Each encode actor loads the encoder once (with `gpus_per_actor` GPUs when the cluster has them) and runs
both phases' jobs: parts (read and chunk a slice of the input files into text) and encode jobs (whole
batches of a shard's batch plan). The driver assembles the parts and writes each shard's vectors in
passage order, so the datastore is byte-identical to `relm build` on the same inputs (stats.json aside),
with a real transformer too (tested with MiniLM): the batches are planned by relm, not by the split. The
kernels must be the same as well: the same device and the same CPU threads per process (`threads_per_actor`;
torch's float sums change with the thread count, measured: 21 of 38 MiniLM vectors moved a float16 step
between 1 and 2 threads in batches of 4). A part and an encode job are the units of resumption: a killed build reruns only the unfinished
ones. Ray Data `map_batches` was not used: it cuts its own batches, and what a text is batched with
changes its vector by a float16 step now and then (`encoders.batching`), so identity would be lost.
Parts and jobs are written to `out`, which every node must see (a shared filesystem).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from ..config import BuildConfig
from ..datastore.parts import EncodeJob, PartJob, build_in_parts, build_part, encode_job
from ..errors import ConfigError, RelmError
from .runtime import RayConfig, init_ray

log = logging.getLogger(__name__)
DEFAULT_PARTS = 16  # fixed, not from the cluster's size, so a resumed build on another cluster finds its parts


class EncodeWorker:
    """The encode actor's body: one encoder, loaded at start, running the parts and encode jobs it is given."""

    def __init__(self, config: BuildConfig, encoder=None, threads: int = 1):
        import torch

        torch.set_num_threads(threads)  # before the encoder loads: the ONNX backends read it too
        if encoder is None:
            from ..encoders import load_encoder

            encoder = load_encoder(config.encoder)
        self.encoder = encoder

    def build(self, job: PartJob) -> dict:
        return build_part(job, show_progress=False, encoder=self.encoder)

    def encode(self, job: EncodeJob) -> int:
        return encode_job(job, self.encoder)


class RayWorkers:
    """`datastore.parts.Workers` on a pool of `EncodeWorker` actors: each idle actor takes the next job."""

    def __init__(self, ray, config: BuildConfig, *, actors: int, gpus_per_actor: float, threads_per_actor: int,
                 encoder=None):
        self.ray = ray
        remote = ray.remote(EncodeWorker).options(num_cpus=threads_per_actor, num_gpus=gpus_per_actor,
                                                  max_restarts=0)
        enc = ray.put(encoder) if encoder is not None else None
        self.actors = [remote.remote(config, enc, threads_per_actor) for _ in range(actors)]
        log.info("ray build: %d encode actors of %d CPU thread(s)", actors, threads_per_actor)

    def build_parts(self, jobs: list[PartJob], done: Callable[[PartJob, dict], None]) -> None:
        self._run("build", jobs, done)

    def encode(self, jobs: list[EncodeJob], done: Callable[[EncodeJob, int], None]) -> None:
        self._run("encode", jobs, done)

    def _run(self, method: str, jobs: list, done: Callable) -> None:
        queue, idle, running, error = list(jobs), list(self.actors), {}, None
        while running or (queue and error is None):
            while idle and queue and error is None:
                actor, job = idle.pop(), queue.pop(0)
                running[getattr(actor, method).remote(job)] = (actor, job)
            [ref], _ = self.ray.wait(list(running), num_returns=1)
            actor, job = running.pop(ref)
            idle.append(actor)
            try:
                result = self.ray.get(ref)
            except Exception as e:  # noqa: BLE001 (the jobs in flight still finish: a rerun keeps them)
                error = error or e
                continue
            done(job, result)
        if error is not None:
            cause = getattr(error, "cause", None)
            raise cause if isinstance(cause, RelmError) else error

    def close(self) -> None:
        for a in self.actors:
            self.ray.kill(a)


def ray_build(inputs: list[str | Path], out: str | Path, config: BuildConfig = BuildConfig(), *,
              ray_config: RayConfig = RayConfig(), parts: int = DEFAULT_PARTS, encode_actors: int | None = None,
              gpus_per_actor: float = 0.0, threads_per_actor: int = 1, encoder=None,
              show_progress: bool | None = None, passages_per_job: int | None = None):
    """Build `out` from `inputs` on Ray (see the module docstring); the opened Datastore."""
    if not isinstance(parts, int) or parts < 1:
        raise ConfigError(f"--parts must be a positive integer, got {parts!r}")
    if encode_actors is not None and (not isinstance(encode_actors, int) or encode_actors < 1):
        raise ConfigError(f"--encode-actors must be a positive integer, got {encode_actors!r}")
    if gpus_per_actor < 0:
        raise ConfigError(f"--gpus-per-actor must be >= 0, got {gpus_per_actor}")
    if not isinstance(threads_per_actor, int) or threads_per_actor < 1:
        raise ConfigError(f"--threads-per-actor must be a positive integer, got {threads_per_actor!r}")
    ray = init_ray(ray_config)
    n = encode_actors or max(1, int(ray.cluster_resources().get("CPU", 1)) // threads_per_actor)
    workers = RayWorkers(ray, config, actors=n, gpus_per_actor=gpus_per_actor, threads_per_actor=threads_per_actor,
                         encoder=encoder)
    extra = {} if passages_per_job is None else {"passages_per_job": passages_per_job}
    try:
        return build_in_parts(inputs, out, config, world_size=parts, show_progress=show_progress, encoder=encoder,
                              workers=workers, **extra)
    finally:
        workers.close()
