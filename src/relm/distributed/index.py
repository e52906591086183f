"""`ray_build_sharded_index`: `relm index --shards N --ray`, each shard trained and filled in its own task.

The driver draws the partition (`sharding.plan_shards`: k-means centroids, LSH planes or domains) and the
shard of every passage (`assign_passages`, one pass); task s then trains shard s on the plan's training
sample and adds its passages in id order (`fill_shard`), reading only its own vectors from the datastore
(memory-mapped; on a cluster the datastore is on a shared filesystem). The shard files are byte-identical
to the one-process build's.
"""

from __future__ import annotations

from pathlib import Path

from ..retrieval.sharding import ShardConfig, ShardPlan, build_sharded_index, fill_shard
from .runtime import RayConfig, init_ray


def _build_shard(root: str, plan: ShardPlan, s: int, where, out: str) -> int:
    from ..datastore import Datastore

    shard = fill_shard(Datastore.open(root), plan, s, where)
    shard.save(Path(out) / f"shard-{s:04d}.faiss")
    return int(shard.index.ntotal)


def ray_build_sharded_index(ds, name: str, config: ShardConfig = ShardConfig(), *, overwrite: bool = False,
                            ray_config: RayConfig = RayConfig()):
    """`build_sharded_index` with the shards built by parallel Ray tasks; the opened ShardedIndex."""
    from ..retrieval.sharding import assign_passages

    ray = init_ray(ray_config)
    task = ray.remote(num_cpus=1)(_build_shard)

    def build_shards(plan: ShardPlan, path: Path) -> None:
        # the view's vectors are the live datastore's (an index build changes no passage): tasks open ds.root
        where, plan_ref = ray.put(assign_passages(ds, plan)), ray.put(plan)
        ray.get([task.remote(str(ds.root), plan_ref, s, where, str(path)) for s in range(plan.n_shards)])

    return build_sharded_index(ds, name, config, overwrite=overwrite, build_shards=build_shards)
