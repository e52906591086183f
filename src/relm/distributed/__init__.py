"""relm on Ray (optional: `pip install relm[ray]`): distributed build, per-shard index builds, and a
sharded index served by one Ray actor per shard. The only package of relm that imports Ray, lazily.

- `runtime`: `RayConfig` (address, timeouts, failure policy) and `init_ray`;
- `build`: `ray_build`, the parts of `datastore.build.build_in_parts` in an actor pool, then `assemble`;
- `index`: `ray_build_sharded_index`, each shard of `retrieval.sharding` trained and filled in its own task;
- `search`: `ShardServer` (the actor), `RayShards` (the actors of one sharded index and Retrievers over them),
  `RayShardedIndex` (the fan-out over futures, the local merge).
"""

from .runtime import RayConfig, init_ray  # noqa: F401
