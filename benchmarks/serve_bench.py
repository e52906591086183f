"""`relm serve` under load, then under faults, on the pydocs datastore with an IVF-PQ index, over loopback.

(a) index only: the same Retriever in-process (encoder + faiss, ids only), at its best batch size of
    --a-batches (on a CPU small batches encode fastest; taking the best keeps (b)/(a) honest);
(b) end to end: one query per POST /search from --concurrency clients at once (httpx, asyncio), queries/s and
    p50/p99 latency, a fixed number of requests per level; (a) and each (b) level alternate for --rounds
    rounds (medians), so the (b)/(a) ratios are taken side by side;
(c) POST /generate streamed to --gen-clients concurrent clients (SmolLM2, greedy): tokens/s per stream and
    summed, time to first token;
faults, while --concurrency 32 clients keep searching: malformed JSON, oversized bodies, a wrong key,
streams the client drops after two tokens, and a `relm add` of new held-out documents. Counted: 5xx (target
0), requests without an answer (target 0), then the server must still answer, at the new revision, and find
an added document.

Queries are held-out text (../shared/data/eval/pydocs.jsonl.gz) cut into --query-words-word pieces. The
datastore is copied for each run (a scratch copy takes the `relm add`), from --base, made from --source
(an existing pydocs datastore) or built from ../shared/data/corpus/pydocs.jsonl.gz when missing.

    python benchmarks/serve_bench.py --source /work/gen/pydocs     # ~10 minutes on 2 cores
    python benchmarks/serve_bench.py --retriever bm25 --out benchmarks/results/serve_bench_bm25.json
    python benchmarks/serve_bench.py --requests 64 --rounds 1 --concurrency 1,8   # a quick look

Results: benchmarks/results/serve_bench.json and a table in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from readme_table import write_readme_table  # benchmarks/ is on sys.path when run as a script

HERE = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("RELM_SHARED_DATA", HERE.parents[1] / "shared" / "data"))
RESULTS = HERE / "results" / "serve_bench.json"
KEY = "serve-bench-key-0123"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def say(msg: str) -> None:
    print(f"[serve_bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def relm(*args: str) -> None:
    say("relm " + " ".join(args))
    subprocess.run([sys.executable, "-m", "relm", *args], check=True, env=ENV)


def ensure_base(base: Path, source: Path | None, kind: str, index: str) -> Path:
    """The benchmark's own pydocs datastore with the index `index` (IVF-PQ for ann, or BM25) built once."""
    if not (base / "manifest.json").exists():
        base.parent.mkdir(parents=True, exist_ok=True)
        if source is not None:
            shutil.copytree(source, base, ignore=shutil.ignore_patterns("indexes", ".lock", ".update"))
        else:
            relm("build", str(SHARED / "corpus" / "pydocs.jsonl.gz"), "--out", str(base), "--id-field", "id")
    if not (base / "indexes" / index).exists():
        relm("index", str(base), "--name", index, *(["--bm25"] if kind == "bm25" else ["--factory", "ivfpq"]),
             "--no-progress")
    return base


def held_out(n: int, words: int, skip_docs: int = 0) -> tuple[list[str], list[dict]]:
    """(n queries of `words` words cut from held-out pydocs documents, the documents after the first
    `skip_docs` used for queries: candidates for the `relm add`)."""
    docs = [json.loads(line) for line in gzip.open(SHARED / "eval" / "pydocs.jsonl.gz", "rt", encoding="utf-8")]
    queries = []
    for d in docs:
        w = d["text"].split()
        queries += [" ".join(w[i:i + words]) for i in range(0, len(w) - words + 1, words)]
    return queries[:n], docs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- (a) index only ----------------------------------------------------------------------------------------

def index_only(retriever, queries: list[str], batch: int, k: int) -> float:
    """Queries/s of Retriever.search_ids in batches (encoder + faiss, no HTTP)."""
    from relm.retrieval.options import SearchOptions

    opts = SearchOptions(k=k)
    t0 = time.perf_counter()
    for i in range(0, len(queries), batch):
        retriever.search_ids(queries[i:i + batch], opts)
    return len(queries) / (time.perf_counter() - t0)


# -- (b) end to end ---------------------------------------------------------------------------------------

async def search_load(base: str, queries: list[str], concurrency: int, k: int, time_limit: float,
                      stop: asyncio.Event | None = None) -> dict[str, Any]:
    """`concurrency` clients POST one query each until the queries (or the time) run out, or `stop` is set.
    The load generator is aiohttp: httpx's pool, at 32 connections, capped the same server at 96 q/s
    (server p99 under 50 ms, client p99 1.7 s) where aiohttp reached 374 q/s."""
    import aiohttp

    latencies, statuses, failures, sent = [], [], [], 0
    queue = list(reversed(queries))
    deadline = time.perf_counter() + time_limit
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(base, connector=connector, timeout=timeout,
                                     headers={"Authorization": f"Bearer {KEY}"}) as session:
        async def worker():
            nonlocal sent
            while queue and time.perf_counter() < deadline and not (stop and stop.is_set()):
                q = queue.pop()
                sent += 1
                t0 = time.perf_counter()
                try:
                    async with session.post("/search", json={"query": q, "k": k}) as r:
                        await r.read()
                        statuses.append(r.status)
                except (TimeoutError, aiohttp.ClientError) as e:  # no answer: failed or dropped
                    statuses.append(type(e).__name__)
                    failures.append(f"{type(e).__name__}: {e!r} after {time.perf_counter() - t0:.2f} s")
                latencies.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    ok = sum(s == 200 for s in statuses)
    lat = np.array(latencies) * 1000
    return {"concurrency": concurrency, "requests": sent, "answered": len(statuses), "ok": ok,
            "non_200": {str(s): statuses.count(s) for s in set(statuses) if s != 200}, "failures": failures[:10],
            "qps": ok / wall, "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
            "seconds": wall}


# -- (c) streaming generation -----------------------------------------------------------------------------

async def generation_load(base: str, prompts: list[str], clients: int, tokens: int) -> dict[str, Any]:
    import httpx

    runs = []
    queue = list(reversed(prompts))

    async def worker(client):
        while queue:
            prompt = queue.pop()
            body = {"prompt": prompt, "max_new_tokens": tokens, "stop_at_eos": False, "stream": True, "k": 2,
                    "retrieve_every": 16}
            t0 = time.perf_counter()
            first, n, status = None, 0, None
            async with client.stream("POST", "/generate", json=body) as r:
                status = r.status_code
                async for line in r.aiter_lines():
                    if line == "event: token":
                        n += 1
                        first = first or time.perf_counter() - t0
            runs.append({"status": status, "tokens": n, "ttft_s": first, "seconds": time.perf_counter() - t0})

    async with httpx.AsyncClient(base_url=base, headers={"X-API-Key": KEY}, timeout=600) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(clients)))
        wall = time.perf_counter() - t0
    ok = [r for r in runs if r["status"] == 200]
    return {"clients": clients, "generations": len(runs), "ok": len(ok), "max_new_tokens": tokens,
            "tokens_per_s_per_stream": statistics.median(r["tokens"] / r["seconds"] for r in ok),
            "tokens_per_s_total": sum(r["tokens"] for r in ok) / wall,
            "ttft_s_p50": statistics.median(r["ttft_s"] for r in ok), "ttft_s_max": max(r["ttft_s"] for r in ok),
            "seconds": wall}


# -- faults -----------------------------------------------------------------------------------------------

async def faults(base: str, ds: Path, queries: list[str], new_docs: list[dict], time_limit: float) -> dict[str, Any]:
    """Faults while 32 clients search; then checks that the server answers, at the new revision."""
    import httpx

    tmp = ds.parent / "added.jsonl"
    tmp.write_text("".join(json.dumps({"id": f"added-{i}", "text": d["text"]}) + "\n" for i, d in enumerate(new_docs)))
    revision = httpx.get(f"{base}/health").json()["revision"]
    stop = asyncio.Event()
    load = asyncio.create_task(search_load(base, queries * 50, 32, 10, time_limit, stop))
    got: dict[str, list] = {"malformed_json": [], "oversized_body": [], "wrong_key": [], "dropped_streams": []}
    auth = {"Authorization": f"Bearer {KEY}"}
    async with httpx.AsyncClient(base_url=base, timeout=60) as c:
        add = asyncio.create_task(asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "relm", "add", str(ds), str(tmp), "--no-progress"], env=ENV,
            capture_output=True, text=True))
        for _ in range(20):
            r = await c.post("/search", content=b'{"query": "x",', headers={**auth, "content-type": "application/json"})
            got["malformed_json"].append(r.status_code)
            r = await c.post("/search", json={"query": "x " * 600_000}, headers=auth)
            got["oversized_body"].append(r.status_code)
            r = await c.post("/search", json={"query": "x"}, headers={"Authorization": "Bearer wrong-key-000"})
            got["wrong_key"].append(r.status_code)
        for i in range(4):
            async with c.stream("POST", "/generate", headers=auth, json={"prompt": queries[i], "max_new_tokens": 256,
                                                                         "stream": True, "stop_at_eos": False}) as r:
                n = 0
                async for line in r.aiter_lines():
                    n += line == "event: token"
                    if n == 2:
                        break  # the client goes away mid-stream
                got["dropped_streams"].append(r.status_code)
        added = await add
        stop.set()
        searched = await load
        await asyncio.sleep(1.0)
        health = (await c.get("/health")).json()
        probe = (await c.post("/search", json={"query": new_docs[0]["text"][:300], "k": 3}, headers=auth)).json()
        metrics = (await c.get("/metrics", headers=auth)).text
    five = sum(float(line.split()[-1]) for line in metrics.splitlines()
               if line.startswith("relm_errors_total{") and 'status="5' in line)
    active = next(float(line.split()[-1]) for line in metrics.splitlines() if line.startswith("relm_generations_active"))
    return {"relm_add_exit": added.returncode, "relm_add_stderr": added.stderr[-500:] if added.returncode else "",
            "statuses": {k: sorted(set(v)) for k, v in got.items()}, "search_under_faults": searched,
            "server_5xx": five, "unanswered": searched["requests"] - searched["answered"],
            "revision_before": revision, "revision_after": health.get("revision"), "ready_after": health["ready"],
            "added_found": any(h["doc_id"] == "added-0" for h in probe.get("hits", [])),
            "generations_active_after": active}


# -- the run ----------------------------------------------------------------------------------------------

def table(report: dict[str, Any]) -> str:
    a = report["index_only_qps"]
    by = report.get("index_only_by_batch")
    best = (", per batch size " + ", ".join(f"{b}: {statistics.median(r[b] for r in by):.0f}" for b in by[0])) \
        if by else ""
    lines = [f"Index only (a): {a:.0f} queries/s (median over {report['rounds']} rounds of the best batch size{best}; "
             f"in-process; {report['retriever']}; server --max-batch {report['max_batch']}).", "",
             "| /search concurrency | queries/s (b) | (b)/(a) | p50 ms | p99 ms | non-200 |", "|---|---|---|---|---|---|"]
    for level in report["search"]:
        lines.append(f"| {level['concurrency']} | {level['qps']:.0f} | {level['ratio']:.2f} | {level['p50_ms']:.1f} | "
                     f"{level['p99_ms']:.1f} | {level['non_200'] or 0} |")
    gens = report["generate"] if isinstance(report["generate"], list) else [report["generate"]]
    lines += ["", f"/generate streamed, {gens[0]['generations']} generations x {gens[0]['max_new_tokens']} tokens per "
              f"level (SmolLM2 greedy, k=2 every 16 tokens, {report.get('gen_threads', 2)} generation threads):", "",
              "| streaming clients | tokens/s per stream | tokens/s total | time to first token p50 / max s |",
              "|---|---|---|---|"]
    for g in gens:
        lines.append(f"| {g['clients']} | {g['tokens_per_s_per_stream']:.2f} | {g['tokens_per_s_total']:.2f} | "
                     f"{g['ttft_s_p50']:.2f} / {g['ttft_s_max']:.2f} |")
    f = report["faults"]
    s = f["search_under_faults"]
    lines += ["", f"Faults during a 32-client search load ({s['answered']:,} searches, {s['qps']:.0f}/s): malformed "
              f"JSON -> {f['statuses']['malformed_json']}, oversized bodies -> {f['statuses']['oversized_body']}, "
              f"wrong key -> {f['statuses']['wrong_key']}, 4 streams dropped after 2 tokens, `relm add` (exit "
              f"{f['relm_add_exit']}) -> revision {f['revision_before']} to {f['revision_after']}, added document "
              f"found: {f['added_found']}; 5xx: {f['server_5xx']:.0f}, unanswered: {f['unanswered']}, "
              f"generations still running after: {f['generations_active_after']:.0f}."]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", type=Path, default=HERE / ".cache" / "serve" / "pydocs")
    ap.add_argument("--source", type=Path, help="an existing pydocs datastore to copy (else built from the corpus)")
    ap.add_argument("--retriever", default="ann", choices=["ann", "bm25"],
                    help="ann: MiniLM + IVF-PQ (the encoder dominates on CPU); bm25: no encoder, so the "
                    "server's own cost per request shows")
    ap.add_argument("--index", help="index name (default: ivfpq for ann, bm25 for bm25)")
    ap.add_argument("--requests", type=int, default=512, help="queries per (b) level and for (a)")
    ap.add_argument("--query-words", type=int, default=32)
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--concurrency", default="1,8,32,128")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-batch", type=int, default=8, help="the server's --max-batch")
    ap.add_argument("--a-batches", default="1,4,8,16,64", help="(a): batch sizes tried; the best counts")
    ap.add_argument("--gen-clients", default="1,4", help="concurrent streaming clients, per level (1: the baseline)")
    ap.add_argument("--gen-prompts", type=int, default=8)
    ap.add_argument("--gen-threads", type=int, default=2, help="the server's --gen-threads")
    ap.add_argument("--gen-tokens", type=int, default=32)
    ap.add_argument("--time-limit", type=float, default=120, help="seconds per load level at most")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)

    from relm.datastore import Datastore
    from relm.retrieval.options import RetrieverConfig
    from relm.retrieval.retriever import Retriever

    args.index = args.index or ("ivfpq" if args.retriever == "ann" else "bm25")
    base = ensure_base(args.base, args.source, args.retriever, args.index)
    scratch = args.base.parent / "run"
    shutil.rmtree(scratch, ignore_errors=True)
    shutil.copytree(base, scratch / "ds")
    ds_path = scratch / "ds"
    queries, docs = held_out(args.requests, args.query_words)
    levels = [int(c) for c in args.concurrency.split(",")]
    import torch

    from relm.serve import ServeConfig

    # (a) with the intra-op threads the server gives each of its torch calls (side by side, same setting)
    torch.set_num_threads(ServeConfig(str(ds_path), gen_threads=args.gen_threads).torch_threads_for(os.cpu_count()))
    config = RetrieverConfig(args.retriever, index=args.index)
    retriever = Retriever(Datastore.open(ds_path), config)
    retriever.search_ids(queries[:8], 1)  # load the encoder

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(scratch / "server.log", "w")
    command = [sys.executable, "-m", "relm", "serve", str(ds_path), "--port", str(port), "--retriever", args.retriever,
               "--index", args.index, "--api-key", KEY, "--max-batch", str(args.max_batch), "--max-body-bytes",
               str(1 << 20), "--gen-threads", str(args.gen_threads)]
    server = subprocess.Popen(command, env=ENV, stdout=log, stderr=subprocess.STDOUT)
    import httpx

    try:
        for _ in range(1200):
            if server.poll() is not None:
                raise SystemExit("the server exited: " + (scratch / "server.log").read_text()[-2000:])
            try:
                if httpx.get(f"{url}/health", timeout=1).json()["ready"]:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        asyncio.run(search_load(url, queries[:64], 8, args.k, 60))  # warm up
        a_runs, a_by_batch, b_runs = [], [], {c: [] for c in levels}
        a_batches = [int(b) for b in args.a_batches.split(",")]
        for rnd in range(args.rounds):
            by_batch = {b: index_only(retriever, queries[:128], b, args.k) for b in a_batches}
            a_runs.append(max(by_batch.values()))
            a_by_batch.append(by_batch)
            say(f"round {rnd + 1}: (a) {a_runs[-1]:.0f} q/s (" + ", ".join(f"{b}: {q:.0f}" for b, q in by_batch.items())
                + ")")
            for c in levels:
                b_runs[c].append(asyncio.run(search_load(url, queries, c, args.k, args.time_limit)))
                r = b_runs[c][-1]
                say(f"round {rnd + 1}: (b) c={c}: {r['qps']:.0f} q/s, p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} "
                    f"ms, non-200 {r['non_200']}; ratio {r['qps'] / a_runs[-1]:.2f}")
        a = statistics.median(a_runs)
        search = []
        for c in levels:
            runs = b_runs[c]
            search.append({"concurrency": c, "qps": statistics.median(r["qps"] for r in runs),
                           "ratio": statistics.median(r["qps"] / x for r, x in zip(runs, a_runs, strict=True)),
                           "p50_ms": statistics.median(r["p50_ms"] for r in runs),
                           "p99_ms": statistics.median(r["p99_ms"] for r in runs),
                           "non_200": {k: sum(r["non_200"].get(k, 0) for r in runs)
                                       for r0 in runs for k in r0["non_200"]}, "runs": runs})
        prompts = [" ".join(d["text"].split()[:64]) for d in docs[: args.gen_prompts]]
        generate = []
        for clients in (int(c) for c in args.gen_clients.split(",")):
            say(f"(c) {clients} streaming clients")
            generate.append(asyncio.run(generation_load(url, prompts, clients, args.gen_tokens)))
        say("faults")
        fault = asyncio.run(faults(url, ds_path, queries, docs[-3:], args.time_limit))
    finally:
        server.terminate()
        server.wait(timeout=60)
        log.close()
    report = {"datastore": str(base), "passages": len(retriever.ds), "retriever": retriever.describe(),
              "queries": len(queries), "query_words": args.query_words, "k": args.k, "rounds": args.rounds,
              "max_batch": args.max_batch, "index_only_qps": a, "index_only_runs": a_runs,
              "index_only_by_batch": a_by_batch, "search": search,
              "generate": generate, "gen_threads": args.gen_threads,
              "torch_threads": torch.get_num_threads(), "faults": fault, "cpus": os.cpu_count(),
              "load_average": os.getloadavg()}
    text = table(report)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    if args.out.resolve().parent == RESULTS.parent:  # a results file: its table in benchmarks/README.md
        write_readme_table(args.out.stem, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
