"""`ray_build`: `relm build --ray`, the parts of `datastore.build.build_in_parts` built by an actor pool.

Each encode actor loads the encoder once (with `gpus_per_actor` GPUs when the cluster has them) and
builds whole parts: it reads and chunks its files and encodes each shard of passages in one `encode`
call, as the one-process build does; the driver then `assemble`s the parts in input order. The result is
byte-identical to `relm build` (stats.json aside) for an encoder whose vectors do not depend on the batch
(tested); with a transformer a part's passages are length-sorted and padded among themselves, not among the
whole shard's, and ~1% of vectors differ by one float16 step (docs/results.md). Exact identity needs a
two-phase build: chunk the parts, then encode the final datastore's shards, one call each. A part is the unit
of resumption: a killed build reruns only the parts without a finished part datastore (and resumes those
from their own finished shards). Ray Data `map_batches` was not used for the encoding: it cuts its own
batches, and a batch's length-sorted padding changes the float results, so byte identity would be lost.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from ..config import BuildConfig
from ..datastore.build import PartJob, build_in_parts, build_part
from ..errors import ConfigError, RelmError
from ..progress import progress
from .runtime import RayConfig, init_ray

log = logging.getLogger(__name__)
DEFAULT_PARTS = 16  # fixed, not from the cluster's size, so a resumed build on another cluster finds its parts


class EncodeWorker:
    """The encode actor's body: one encoder, loaded at start, building the parts it is given."""

    def __init__(self, config: BuildConfig, encoder=None):
        if encoder is None:
            from ..encoders import load_encoder

            encoder = load_encoder(config.encoder)
        self.encoder = encoder

    def build(self, job: PartJob) -> tuple[int, dict]:
        return job.rank, build_part(job, show_progress=False, encoder=self.encoder)


def ray_build(inputs: list[str | Path], out: str | Path, config: BuildConfig = BuildConfig(), *,
              ray_config: RayConfig = RayConfig(), parts: int = DEFAULT_PARTS, encode_actors: int | None = None,
              gpus_per_actor: float = 0.0, encoder=None, show_progress: bool | None = None):
    """Build `out` from `inputs` on Ray (see the module docstring); the opened Datastore."""
    if not isinstance(parts, int) or parts < 1:
        raise ConfigError(f"--parts must be a positive integer, got {parts!r}")
    if encode_actors is not None and (not isinstance(encode_actors, int) or encode_actors < 1):
        raise ConfigError(f"--encode-actors must be a positive integer, got {encode_actors!r}")
    if gpus_per_actor < 0:
        raise ConfigError(f"--gpus-per-actor must be >= 0, got {gpus_per_actor}")
    ray = init_ray(ray_config)

    def run_parts(jobs: list[PartJob]) -> None:
        cpus = int(ray.cluster_resources().get("CPU", 1))
        n = min(len(jobs), encode_actors or max(1, cpus))
        remote = ray.remote(EncodeWorker).options(num_cpus=1, num_gpus=gpus_per_actor, max_restarts=0)
        enc = ray.put(encoder) if encoder is not None else None
        actors = [remote.remote(config, enc) for _ in range(n)]
        sizes = {job.rank: sum(f.path.stat().st_size for f in job.files) for job in jobs}
        total, done_bytes, passages, t0 = sum(sizes.values()), 0, 0, time.perf_counter()
        log.info("ray build: %d parts on %d encode actors", len(jobs), n)
        bar = progress(total=total, desc="build (ray)", unit="B", unit_scale=True, enabled=show_progress)
        queue, idle, running, error = list(jobs), list(actors), {}, None
        try:
            while running or (queue and error is None):
                while idle and queue and error is None:  # each idle actor takes the next part
                    actor = idle.pop()
                    running[actor.build.remote(queue.pop(0))] = actor
                [ref], _ = ray.wait(list(running), num_returns=1)
                idle.append(running.pop(ref))
                try:
                    rank, counts = ray.get(ref)
                except Exception as e:  # noqa: BLE001 (the parts in flight still finish: a rerun keeps them)
                    error = error or e
                    continue
                done_bytes, passages = done_bytes + sizes[rank], passages + counts["passages"]
                elapsed = time.perf_counter() - t0
                rate = passages / max(elapsed, 1e-9)
                eta = elapsed * (total - done_bytes) / max(done_bytes, 1)  # by input bytes left
                bar.update(sizes[rank])
                bar.set_postfix_str(f"{rate:,.0f} passages/s, ETA {eta:,.0f} s")
                log.info("ray build: part %d done (%s passages); %d%% of input, %.0f passages/s, ETA %.0f s",
                         rank, f"{counts['passages']:,}", 100 * done_bytes // max(total, 1), rate, eta)
        finally:
            bar.close()
            for a in actors:
                ray.kill(a)
        if error is not None:
            cause = getattr(error, "cause", None)
            raise cause if isinstance(cause, RelmError) else error

    return build_in_parts(inputs, out, config, world_size=parts, show_progress=show_progress, encoder=encoder,
                          run_parts=run_parts)
