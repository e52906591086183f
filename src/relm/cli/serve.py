"""`relm serve DS`: search and streaming generation over HTTP (FastAPI on uvicorn); see relm.serve."""

from __future__ import annotations

import json
import logging
import os

from ..distributed.runtime import add_ray_arguments, ray_config
from ..errors import ConfigError
from .common import HelpFormatter
from .search import add_retriever_arguments, retriever_config

log = logging.getLogger(__name__)
ENV_CONFIG = "RELM_SERVE_CONFIG"  # --workers > 1: each worker process rebuilds its app from this


def register(sub) -> None:
    p = sub.add_parser(
        "serve", help="serve search and generation over HTTP",
        description="Serve DS over HTTP: POST /search (batched), POST /generate (SSE with \"stream\": true), "
        "POST /v1/completions and /v1/chat/completions (OpenAI-compatible, retrieved passages in `retrieved`), "
        "GET /info, GET /metrics (Prometheus), GET /health (no key), GET / (a web page). Binds to 127.0.0.1; a "
        "non-loopback --host needs an API key (--api-key or $RELM_API_KEY) or --insecure. The datastore can be "
        "updated (relm add) while it runs: new revisions are picked up without a restart.",
        formatter_class=HelpFormatter)
    p.add_argument("datastore", metavar="DS")
    p.add_argument("--host", default="127.0.0.1", help="address to bind")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--lm", default="smollm2",
                   help="'smollm2', a local HF model directory or .gguf file, or 'none' (search only)")
    p.add_argument("--device", default="auto", help="the LM's device: auto, cpu, cuda, mps")
    p.add_argument("--api-key", metavar="KEY", help="require this key (Bearer or X-API-Key) on every endpoint but "
                   "/health (default: $RELM_API_KEY)")
    p.add_argument("--insecure", action="store_true", help="allow a non-loopback --host without an API key")
    p.add_argument("--workers", type=int, default=1,
                   help="server processes (each loads the datastore and LM; batches form per process)")
    p.add_argument("--access-log", action="store_true", help="log every request (uvicorn's access log)")
    b = p.add_argument_group("bounds and batching")
    b.add_argument("--timeout", type=float, default=60.0, metavar="S", help="every request ends within S seconds "
                   "(504)")
    b.add_argument("--max-body-bytes", type=int, default=1 << 20, metavar="N", help="larger bodies get 413")
    b.add_argument("--max-queries", type=int, default=256, metavar="N", help="queries per /search request")
    b.add_argument("--max-k", type=int, default=1000, metavar="N", help="hits per query, passages per retrieval")
    b.add_argument("--max-prompt-chars", type=int, default=32_000, metavar="N")
    b.add_argument("--max-tokens", type=int, default=1024, metavar="N", help="new tokens per generation")
    b.add_argument("--batch-window-ms", type=float, default=3.0, metavar="MS",
                   help="how long a search waits for others to share its retriever call")
    b.add_argument("--max-batch", type=int, default=8, metavar="N",
                   help="queries per retriever call (on a CPU the encoder is fastest at 4-8; raise it on a GPU)")
    b.add_argument("--search-threads", type=int, default=1, metavar="N", help="retriever calls running at once")
    b.add_argument("--gen-threads", type=int, default=2, metavar="N", help="generations running at once")
    b.add_argument("--refresh-s", type=float, default=0.5, metavar="S",
                   help="check for a new datastore revision at most this often")
    b.add_argument("--torch-threads", type=int, metavar="N",
                   help="torch intra-op threads (default: CPUs / (search + generation threads), at least 1)")
    add_retriever_arguments(p)
    add_ray_arguments(p, search=True)
    p.set_defaults(run=run)


def serve_config(args):
    from ..serve import ServeConfig

    if not 0 < args.port < 65536:
        raise ConfigError(f"--port must be in 1..65535, got {args.port}")
    if args.workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {args.workers}")
    ray = ray_config(args)
    if ray is not None and args.workers > 1 and ray.address is None:
        raise ConfigError("--ray with --workers > 1 needs a running cluster to share: --ray-address auto "
                          "(after `ray start --head`)")
    return ServeConfig(
        datastore=args.datastore, retriever=retriever_config(args).to_dict(),
        lm=None if args.lm.lower() == "none" else args.lm, device=args.device, max_body_bytes=args.max_body_bytes,
        max_queries=args.max_queries, max_k=args.max_k, max_prompt_chars=args.max_prompt_chars,
        max_tokens=args.max_tokens, timeout_s=args.timeout, batch_window_ms=args.batch_window_ms,
        max_batch=args.max_batch, search_threads=args.search_threads, gen_threads=args.gen_threads,
        refresh_s=args.refresh_s, torch_threads=args.torch_threads, ray=None if ray is None else ray.to_dict())


def set_torch_threads(config) -> int:
    """torch's intra-op threads for a server process (`ServeConfig.torch_threads_for`); process-wide, so set
    here by the command, not by the library."""
    import torch

    torch.set_num_threads(config.torch_threads_for(os.cpu_count()))
    return torch.get_num_threads()


def worker_app():
    """The app of one --workers process (uvicorn imports this factory in each)."""
    from ..serve import ServeConfig, ServerState, create_app
    from ..serve.security import resolve_api_key
    from . import _configure_logging

    _configure_logging(verbose=False, quiet=False)  # a fresh process: relm's log lines, as in the parent
    config = ServeConfig.from_dict(json.loads(os.environ[ENV_CONFIG]))
    set_torch_threads(config)
    return create_app(ServerState(config, api_key=resolve_api_key(None)), load=True)


def run(args) -> int:
    try:
        import uvicorn

        from ..serve import ServerState, create_app
    except ImportError as e:
        raise ConfigError(f"relm serve needs {e.name}: pip install 'relm[serve]' (fastapi, uvicorn, "
                          "prometheus_client)") from e
    from ..serve.security import ENV_KEY, check_bind, resolve_api_key

    config = serve_config(args)  # every flag checked before anything loads
    key = resolve_api_key(args.api_key)
    check_bind(args.host, key, args.insecure)
    if not os.path.isdir(config.datastore):
        raise ConfigError(f"{config.datastore}: no such datastore directory (build one with `relm build`)")
    where = f"http://{args.host}:{args.port}"
    threads = set_torch_threads(config)
    log.info("relm serve: %s at %s (%s; %d torch threads); loading%s", config.datastore, where,
             "API key required" if key else "no API key", threads,
             f", {args.workers} workers" if args.workers > 1 else "")
    common = {"host": args.host, "port": args.port, "access_log": args.access_log, "log_level": "info",
              "timeout_graceful_shutdown": 5}
    if args.workers > 1:
        os.environ[ENV_CONFIG] = json.dumps(config.to_dict())
        if key is not None:
            os.environ[ENV_KEY] = key
        uvicorn.run("relm.cli.serve:worker_app", factory=True, workers=args.workers, **common)
        return 0
    state = ServerState(config, api_key=key)
    server: uvicorn.Server | None = None

    def stop():
        if server is not None:
            server.should_exit = True

    server = uvicorn.Server(uvicorn.Config(create_app(state, load=True, on_load_failure=stop), **common))
    server.run()
    if state.error is not None:
        raise ConfigError(f"could not serve {config.datastore}: {state.error}")
    return 0
