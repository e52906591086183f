"""`RayConfig` and `init_ray`: joining or starting Ray, with a clear error when Ray is not installed."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

from ..config import check_float, check_int
from ..errors import ConfigError

log = logging.getLogger(__name__)

FAILURE_POLICIES = ("error", "partial")
RAY_MISSING = "Ray is not installed; install relm[ray] (pip install 'relm[ray]') to use --ray"


def import_ray():
    """The `ray` module, or a ConfigError saying how to install it."""
    try:
        import ray
    except ImportError as e:
        raise ConfigError(RAY_MISSING) from e
    return ray


@dataclass(frozen=True)
class RayConfig:
    """How relm uses Ray. `address`: None starts a local Ray on this machine's cores (`num_cpus`, default
    all), "auto" joins the cluster `ray start` made on this node, "ray://HOST:10001" a remote one.
    Sharded search: a shard actor answers within `shard_timeout_s` or is reported, by raising (`error`)
    or by returning the other shards' hits flagged as partial (`partial`); `shard_cpus` CPUs are reserved
    per shard actor (0: none, so any number of shards fits a small machine) and `shard_threads` faiss
    threads run in each."""

    address: str | None = None
    num_cpus: int | None = None
    shard_timeout_s: float = 30.0
    on_shard_failure: str = "error"
    shard_cpus: float = 0.0
    shard_threads: int = 1

    def __post_init__(self):
        if self.address is not None and (not isinstance(self.address, str) or not self.address.strip()):
            raise ConfigError(f"--ray-address must be 'auto', HOST:PORT or ray://HOST:PORT, got {self.address!r}")
        check_int(self.num_cpus, "num_cpus (--ray-cpus)", minimum=1, optional=True)
        check_float(self.shard_timeout_s, "shard_timeout_s (--shard-timeout)", minimum=0.001)
        check_float(self.shard_cpus, "shard_cpus (--shard-cpus)", minimum=0)
        check_int(self.shard_threads, "shard_threads (--shard-threads)", minimum=1)
        if self.on_shard_failure not in FAILURE_POLICIES:
            raise ConfigError(f"on_shard_failure (--on-shard-failure) must be one of {list(FAILURE_POLICIES)}, "
                              f"got {self.on_shard_failure!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | RayConfig) -> RayConfig:
        if isinstance(d, RayConfig):
            return d
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise ConfigError(f"ray config: unknown field(s) {unknown}; known: {sorted(cls.__dataclass_fields__)}")
        return cls(**d)


def init_ray(config: RayConfig):
    """Ray, initialised once per process: a running session is reused (tests, notebooks), else Ray is
    started locally or joined at `config.address`. Returns the `ray` module."""
    ray = import_ray()
    if ray.is_initialized():
        return ray
    kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "ignore_reinit_error": True}
    if config.address is None:
        kw["num_cpus"] = config.num_cpus
    elif config.num_cpus is not None:
        raise ConfigError("--ray-cpus sets up a local Ray; a cluster (--ray-address) has the CPUs `ray start` gave it")
    try:
        ray.init(address=config.address, **kw)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise ConfigError(f"cannot reach Ray at --ray-address {config.address!r}: {e}") from e
    log.info("ray: %s", {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU", "memory")})
    return ray


def add_ray_arguments(p, *, search: bool = False) -> None:
    """`--ray` and `--ray-address` (every Ray entry point), plus the shard-actor flags of search/serve."""
    g = p.add_argument_group("ray (pip install relm[ray])")
    g.add_argument("--ray", action="store_true", help="run on Ray")
    g.add_argument("--ray-address", metavar="ADDR",
                   help="with --ray: 'auto' joins the cluster of `ray start` on this node, ray://HOST:10001 a remote "
                   "one (default: start a local Ray on this machine's cores)")
    g.add_argument("--ray-cpus", type=int, metavar="N", help="with --ray and a local Ray: its CPUs (default: all)")
    if search:
        g.add_argument("--shard-timeout", type=float, default=RayConfig.shard_timeout_s, metavar="S",
                       help="with --ray: a shard actor that has not answered in S seconds is reported")
        g.add_argument("--on-shard-failure", choices=list(FAILURE_POLICIES), default=RayConfig.on_shard_failure,
                       help="with --ray: a slow or dead shard fails the search, or its hits are left out (partial, "
                       "logged)")
        g.add_argument("--shard-cpus", type=float, default=RayConfig.shard_cpus, metavar="C",
                       help="with --ray: CPUs reserved per shard actor (0: none)")
        g.add_argument("--shard-threads", type=int, default=RayConfig.shard_threads, metavar="N",
                       help="with --ray: faiss threads in each shard actor")


def ray_config(args) -> RayConfig | None:
    """The RayConfig of `add_ray_arguments`' flags, or None without --ray (a Ray flag alone is refused)."""
    if not args.ray:
        for flag in ("ray_address", "ray_cpus"):
            if getattr(args, flag, None) is not None:
                raise ConfigError(f"--{flag.replace('_', '-')} needs --ray")
        return None
    kw = {"address": args.ray_address, "num_cpus": args.ray_cpus}
    for f in ("shard_timeout_s", "on_shard_failure", "shard_cpus", "shard_threads"):
        flag = {"shard_timeout_s": "shard_timeout"}.get(f, f)
        if hasattr(args, flag):
            kw[f] = getattr(args, flag)
    return RayConfig(**kw)
