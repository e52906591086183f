"""Retrieval-augmented LM evaluation: windows, retrieval per variant, one batched scoring pass.

    ev = Evaluator(Retriever(ds, RetrieverConfig("ann", index="hnsw")), lm, windows=WindowConfig(1024))
    result = ev.run(read_eval_sets(["eval/pydocs.jsonl.gz"]), [Variant("massiveds", k=3)])
    result.summary()["overall"]["massiveds"]["perplexity"]

Every variant searches through a `Retriever` (the Evaluator's, or that one as another kind for a variant
that names one, e.g. `hybrid`), so eval retrieval takes the same filters, cache and indexes as
`relm search`. What is shared is computed once: each window is scored without retrieval once (that pass
also gives the LM's loss on the query, for the adaptive variant), each distinct query text of a search
is encoded once, each passage tokenized once, and identical LM inputs across variants are scored once.
Every LM input of every variant goes through `lm.score` together, in length-sorted padded batches.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..config import check_int
from ..errors import ConfigError
from ..lm.base import ScoreRequest
from .filters import PassageFilter, apply_filters
from .metrics import paired_bootstrap, summarize
from .variants import Variant, k_from_query_loss, prepend, ralm_blocks
from .windows import Window, WindowConfig, make_windows, pack_streams

log = logging.getLogger(__name__)

SEPARATOR = "\n\n"  # after each prepended passage
CANDIDATE_SLACK = 3  # candidates retrieved per passage wanted, so filters leave enough
# a paired bootstrap over fewer windows than this is not marked significant: with n windows there are
# only C(2n-1, n) distinct resamples (1 for n = 1, where the "interval" is the point estimate), and the
# percentile interval is far too narrow for small n
MIN_SIGNIFICANCE_WINDOWS = 10


def compare(nll_a: np.ndarray, nll_b: np.ndarray, tokens: np.ndarray, *, n_boot: int, seed: int) -> dict:
    """`paired_bootstrap` of b against a, with the significance flag (`excludes_zero`, the table's star)
    set only when there are at least MIN_SIGNIFICANCE_WINDOWS windows; the interval's own verdict is kept
    as `ci_excludes_zero`."""
    vs = paired_bootstrap(nll_a, nll_b, tokens, n_boot=n_boot, seed=seed)
    vs["ci_excludes_zero"] = vs["excludes_zero"]
    vs["min_windows"] = MIN_SIGNIFICANCE_WINDOWS
    vs["tokens"] = int(np.asarray(tokens).sum())
    if vs["windows"] < MIN_SIGNIFICANCE_WINDOWS:
        vs["excludes_zero"] = False
        vs["note"] = (f"{vs['windows']} window(s) < {MIN_SIGNIFICANCE_WINDOWS}: too few for a bootstrap interval; "
                      "not marked significant")
    return vs


def check_variants(variants: list[Variant], config=None) -> None:
    """What every variant needs from the retriever config (a `RetrieverConfig`, default exact), checked
    before the LM is loaded or anything is scored."""
    from ..retrieval.options import RetrieverConfig

    config = RetrieverConfig() if config is None else config
    if not variants:
        raise ConfigError("no variants to evaluate; name at least one (--variants)")
    for v in variants:
        if not isinstance(v, Variant):
            raise ConfigError(f"variants must be Variant objects, got {type(v).__name__}")
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise ConfigError(f"variant names must be distinct, got {names}")
    sparse = [v.name for v in variants if v.retriever in ("bm25", "hybrid")]
    if sparse and not config.bm25_index:
        raise ConfigError(f"variant(s) {', '.join(sparse)} need --bm25-index NAME (build one with "
                          "`relm index DS --name NAME --bm25`)")
    for v in variants:
        if v.retriever is not None:
            config.with_kind(v.retriever)  # refuses what that kind cannot do with this config


@dataclass
class VariantRun:
    variant: Variant
    logprobs: list[np.ndarray]  # per window, the scored tokens' log-probabilities
    k: np.ndarray  # passages used per window (ralm: per block, the mean)
    passages: list[list[int]]  # per window, the passage ids used (ralm: all blocks')
    filtered: Counter = field(default_factory=Counter)
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class EvalResult:
    windows: list[Window]
    baseline: list[np.ndarray]
    query_loss: np.ndarray
    runs: dict[str, VariantRun]
    settings: dict[str, Any]

    def window_nll(self, logprobs: list[np.ndarray]) -> np.ndarray:
        return np.array([-lp[w.target_mask].sum() for w, lp in zip(self.windows, logprobs, strict=True)])

    def summary(self, *, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
        """{"overall": {cond: metrics}, "groups": {"set/domain": {cond: metrics}}, "settings": ...}; each
        variant's metrics carry a paired bootstrap against no retrieval on the same windows."""
        tokens = np.array([w.n_tokens for w in self.windows])
        nbytes = np.array([w.n_bytes for w in self.windows])
        nll = {"none": self.window_nll(self.baseline)}
        nll |= {name: self.window_nll(run.logprobs) for name, run in self.runs.items()}
        groups = {"overall": np.ones(len(self.windows), bool)}
        for key in dict.fromkeys(f"{w.stream.name}/{w.stream.domain}" for w in self.windows):
            groups[key] = np.array([f"{w.stream.name}/{w.stream.domain}" == key for w in self.windows])
        short = np.array([w.short for w in self.windows], bool)
        reference = next(iter(self.runs), None) if len(self.runs) > 1 else None
        out: dict[str, Any] = {"settings": self.settings, "groups": {}, "reference": reference,
                               "min_significance_windows": MIN_SIGNIFICANCE_WINDOWS,
                               "short_windows": int(short.sum())}
        for key, sel in groups.items():
            block = {}
            for cond, values in nll.items():
                m = summarize(values[sel], tokens[sel], nbytes[sel])
                m["short_windows"] = int(short[sel].sum())
                if cond != "none":
                    run = self.runs[cond]
                    m["mean_k"] = float(run.k[sel].mean())
                    m["vs_none"] = compare(nll["none"][sel], values[sel], tokens[sel], n_boot=n_boot, seed=seed)
                    if reference and cond != reference:  # each variant against the first one, same windows
                        m["vs_reference"] = compare(nll[reference][sel], values[sel], tokens[sel],
                                                    n_boot=n_boot, seed=seed)
                block[cond] = m
            if key == "overall":
                out["overall"] = block
            else:
                out["groups"][key] = block
        out["filters"] = {name: dict(run.filtered) for name, run in self.runs.items()}
        out["variants"] = {name: run.variant.to_dict() for name, run in self.runs.items()}
        out["seconds"] = {name: run.seconds for name, run in self.runs.items()}
        return out

    def window_records(self):
        """One JSON-able dict per window: where it is, its counts, and each condition's NLL and passages."""
        base = self.window_nll(self.baseline)
        per = {name: self.window_nll(run.logprobs) for name, run in self.runs.items()}
        for i, w in enumerate(self.windows):
            rec = {"window": w.index, "set": w.stream.name, "domain": w.stream.domain, "start": w.start,
                   "end": w.end, "context": w.n_context, "tokens": w.n_tokens, "bytes": w.n_bytes,
                   "short": w.short, "query_loss": float(self.query_loss[i]), "none": {"nll": float(base[i])}}
            for name, run in self.runs.items():
                rec[name] = {"nll": float(per[name][i]), "k": float(run.k[i]), "passages": run.passages[i]}
            yield rec


class Evaluator:
    """Evaluates an LM on windows of eval text, without and with retrieval from a datastore."""

    def __init__(self, retriever, lm, *, windows: WindowConfig = WindowConfig(), filters: PassageFilter = PassageFilter(),
                 max_context: int | None = None, batch_size: int | None = None, show_progress: bool | None = None,
                 query_truncation: str = "left"):
        """`retriever`: a `Retriever`, or a `Datastore` to search exactly. `query_truncation`: a query
        longer than the encoder reads (a whole-context query is ~2x all-MiniLM-L6-v2's 256 wordpieces)
        keeps its end, next to the scored text ("left"), or its start ("right", the encoder's default);
        it replaces the retriever config's own (recorded in the settings' retriever config)."""
        from dataclasses import replace

        from ..retrieval.retriever import Retriever

        retriever = retriever if isinstance(retriever, Retriever) else Retriever(retriever)
        if retriever.config.query_truncation != query_truncation:
            retriever = Retriever(retriever.ds, replace(retriever.config, query_truncation=query_truncation))
        self.retriever = retriever
        self._retrievers = {self.retriever.kind: self.retriever}
        self.lm = lm
        self.window_config, self.filters = windows, filters
        check_int(max_context, "max_context (--max-context)", minimum=2, optional=True)
        check_int(batch_size, "batch_size (--batch-size)", minimum=1, optional=True)
        self.limit = min(lm.context_length, max_context or lm.context_length)
        if windows.window > self.limit:
            raise ConfigError(f"--window {windows.window} exceeds the LM's context of {self.limit} tokens; "
                              "pass a smaller --window")
        self.batch_size, self.show_progress = batch_size, show_progress
        self._passage_ids: dict[int, np.ndarray] = {}
        self._texts: dict[int, str] = {}

    # -- windows and the no-retrieval pass -------------------------------------------------------
    def windows(self, eval_sets: list[tuple[str, list]]) -> list[Window]:
        streams = [s for name, docs in eval_sets for s in pack_streams(docs, self.lm, set_name=name)]
        windows = make_windows(streams, self.window_config)
        if not windows:
            raise ConfigError("the eval text yields no windows (every document is shorter than 2 tokens)")
        short = [w for w in windows if w.short]
        if short:
            log.warning("%d eval stream(s) shorter than --window %d tokens (%s): each is one short window "
                        "with a proportionally shorter context; their loss is not comparable with full windows",
                        len(short), self.window_config.window,
                        ", ".join(f"{w.stream.name}/{w.stream.domain}: {len(w.ids)} tokens" for w in short[:5])
                        + (", ..." if len(short) > 5 else ""))
        return windows

    def run(self, eval_sets: list[tuple[str, list]], variants: list[Variant]) -> EvalResult:
        check_variants(variants, self.retriever.config)
        for v in variants:
            self.retriever_for(v)  # open every variant's indexes now, not after the no-retrieval pass
        windows = self.windows(eval_sets)
        t0 = time.perf_counter()
        # the no-retrieval pass also scores the query tokens (for adaptive k and the per-window records):
        # the whole context when an adaptive variant queries with it, else the last q context tokens
        q = max([v.query_tokens for v in variants] + [32])
        whole = any(v.adaptive and v.query == "context" for v in variants)
        full = self.score([ScoreRequest(w.ids, len(w.ids) - 1 if whole else min(len(w.ids) - 1, w.n_target + q))
                           for w in windows])
        baseline = [lp[-w.n_target :] for w, lp in zip(windows, full, strict=True)]
        base_s = time.perf_counter() - t0
        log.info("no retrieval: %d windows scored in %.1fs", len(windows), base_s)
        runs = {}
        for v in variants:
            runs[v.name] = self.run_variant(v, windows, full)
        settings = {"windows": self.window_config.__dict__, "n_windows": len(windows), "lm": self.lm.identity(),
                    "max_context": self.limit, "filters": self.filters.__dict__,
                    "retriever": self.retriever.config.to_dict(),
                    "datastore": {"root": str(self.ds.root), "passages": len(self.ds)},
                    "baseline_seconds": base_s}
        return EvalResult(windows, baseline, self.query_losses(windows, full, 32), runs, settings)

    def query_losses(self, windows: list[Window], full: list[np.ndarray], q: int | None) -> np.ndarray:
        """The LM's mean NLL on each window's query tokens (the last q context tokens; all if q is None),
        read off the no-retrieval pass, which scored the last len(full[i]) tokens of window i."""
        out = np.empty(len(windows))
        for i, (w, lp) in enumerate(zip(windows, full, strict=True)):
            ctx = lp[: len(lp) - w.n_target]  # tokens 1 .. n_context - 1
            ctx = ctx[-q:] if q else ctx
            out[i] = -ctx.mean() if len(ctx) else 0.0
        return out

    # -- one variant -------------------------------------------------------------------------------
    def run_variant(self, v: Variant, windows: list[Window], full: list[np.ndarray]) -> VariantRun:
        t0 = time.perf_counter()
        if v.protocol == "ralm":
            return self._run_ralm(v, windows, t0, full)
        queries = [self._query_text(w.context_ids, v) for w in windows]
        scored = [self.lm.decode(w.target_ids) for w in windows]
        chosen, filtered = self.retrieve(v, queries, scored, v.k)
        t1 = time.perf_counter()
        if v.rerank:
            chosen = self.rerank(v, windows, chosen)
        ks = np.full(len(windows), v.k, dtype=np.int64)
        if v.adaptive:
            ks = k_from_query_loss(self.query_losses(windows, full, v.query_tokens if v.query == "last" else None), v.k)
        chosen = [c[:k] for c, k in zip(chosen, ks, strict=True)]
        t2 = time.perf_counter()
        lps = self.score_with_passages(windows, chosen, baseline=full)
        t3 = time.perf_counter()
        log.info("variant %s: retrieve %.1fs, rerank %.1fs, score %.1fs", v.name, t1 - t0, t2 - t1, t3 - t2)
        return VariantRun(v, lps, np.array([len(c) for c in chosen], float), chosen, filtered,
                          {"retrieve": t1 - t0, "rerank": t2 - t1, "score": t3 - t2})

    def score_with_passages(self, windows: list[Window], chosen: list[list[int]],
                            baseline: list[np.ndarray] | None = None) -> list[np.ndarray]:
        """Scored-token log-probs of each window with its passages prepended (MassiveDS); a window
        with no passage reuses `baseline` (its no-retrieval pass) when given."""
        reqs, where = [], []
        for i, (w, ids) in enumerate(zip(windows, chosen, strict=True)):
            if not ids and baseline is not None:
                continue
            reqs.append(ScoreRequest(prepend([self.passage_ids(p) for p in ids], w.ids, self.limit), w.n_target))
            where.append(i)
        scored = self.score(reqs)
        out = [baseline[i][-w.n_target :] if baseline is not None else None for i, w in enumerate(windows)]
        for i, lp in zip(where, scored, strict=True):
            out[i] = lp
        return out  # type: ignore[return-value]

    def _run_ralm(self, v: Variant, windows: list[Window], t0: float,
                  full: list[np.ndarray] | None = None) -> VariantRun:
        """In-Context RALM: per block of `stride` scored tokens, a passage retrieved with the last q tokens
        (or, `stale`, those before them); with `online` thresholds each block's k comes from the no-retrieval
        NLL of the tokens before it, and a block with k = 0 is not retrieved for: it keeps the passages of the
        block before (none for a window's first block), as `relm generate --adaptive-k` keeps its context."""
        blocks = [(i, a, b) for i, w in enumerate(windows)
                  for a, b in ralm_blocks(len(w.ids) - w.n_target, w.n_target, v.stride)]
        firsts = {i: a for i, a, _ in reversed(blocks)}
        ks = [self._online_k(v, windows[i], full[i], a) if full is not None else v.k for i, a, _ in blocks]
        wanted = [n for n, k in enumerate(ks) if k > 0]
        queries = [self._query_text(windows[i].ids[:a if a == firsts[i] else max(a - v.stale, 1)], v)
                   for i, a, _ in (blocks[n] for n in wanted)]
        scored = [self.lm.decode(windows[blocks[n][0]].target_ids) for n in wanted]
        found, filtered = self.retrieve(v, queries, scored, v.k) if wanted else ([], Counter())
        chosen: list[list[int]] = [[] for _ in blocks]
        for n, c in zip(wanted, found, strict=True):
            chosen[n] = c[: ks[n]]
        for n, (i, a, _) in enumerate(blocks):  # k = 0 keeps the passages in context (as generation does)
            if ks[n] == 0 and a != firsts[i]:
                chosen[n] = chosen[n - 1]
        t1 = time.perf_counter()
        # consecutive blocks of a window that retrieved the same passages share their whole input up to
        # the later block, so one causal pass scores them together, with the same numbers; a block without
        # passages is read off the no-retrieval pass
        runs = merge_blocks(blocks, chosen)
        with_passages = [r for r in runs if r[3] or full is None]
        reqs = [ScoreRequest(prepend([self.passage_ids(p) for p in c], windows[i].ids[:b], self.limit), b - a)
                for i, a, b, c in with_passages]
        scored_parts = iter(self.score(reqs))
        lps: list[list[np.ndarray]] = [[] for _ in windows]
        used: list[list[int]] = [[] for _ in windows]
        for (i, _, _), c in zip(blocks, chosen, strict=True):
            used[i].extend(c)
        for i, a, b, c in runs:
            if c or full is None:
                lps[i].append(next(scored_parts))
            else:
                n = len(windows[i].ids)
                lps[i].append(full[i][len(full[i]) - (n - a): len(full[i]) - (n - b)])
        n_blocks = np.bincount([i for i, _, _ in blocks], minlength=len(windows))
        t2 = time.perf_counter()
        return VariantRun(v, [np.concatenate(x) for x in lps], np.array([len(u) for u in used]) / n_blocks, used,
                          filtered, {"retrieve": t1 - t0, "rerank": 0.0, "score": t2 - t1,
                                     "retrievals": float(len(wanted)), "blocks": float(len(blocks))})

    def _online_k(self, v: Variant, w: Window, lp: np.ndarray, a: int) -> int:
        """k for the block starting at window position a: v.k, or with online thresholds the count of them
        below the no-retrieval mean NLL of the `online_span` tokens before a (`lp` scored the window's last
        len(lp) tokens)."""
        if not v.online:
            return v.k
        from ..generation.adaptive import k_from_nll

        end = len(lp) - (len(w.ids) - a)  # lp index of token a
        span = lp[max(end - v.online_span, 0): end]
        return min(k_from_nll(float(-span.mean()), v.online), v.k) if len(span) else v.k

    # -- retrieval -----------------------------------------------------------------------------------
    def _query_text(self, context_ids: np.ndarray, v: Variant) -> str:
        ids = context_ids[-v.query_tokens :] if v.query == "last" else context_ids
        return self.lm.decode(ids).strip() or "."

    def retrieve(self, v: Variant, queries: list[str], scored: list[str], k: int) -> tuple[list[list[int]], Counter]:
        """Per query, up to max(k, rerank) passage ids that pass the filters, best first."""
        want = max(k, v.rerank)
        scores, ids = self.search(v, queries, want * CANDIDATE_SLACK)
        del scores
        removed: Counter = Counter()
        out = []
        for row, text in zip(ids, scored, strict=True):
            cand = [int(i) for i in row if i >= 0]
            kept, counts = apply_filters([self.passage_text(i) for i in cand], text, self.filters)
            removed.update(counts)
            out.append([cand[j] for j in kept[:want]])
        return out, removed

    @property
    def ds(self):
        return self.retriever.ds

    def retriever_for(self, v: Variant):
        """The Retriever variant v searches with: the Evaluator's, or that one as the variant's kind."""
        kind = v.retriever or self.retriever.kind
        if kind not in self._retrievers:
            self._retrievers[kind] = self.retriever.with_kind(kind)
        return self._retrievers[kind]

    def search(self, v: Variant, queries: list[str], k: int, *, subsample=None) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids) of the top k (at most the datastore's size) for each query text, through the
        variant's retriever; `subsample` (a `Subsample`) searches that subsample of the datastore."""
        from ..retrieval.options import SearchOptions

        return self.retriever_for(v).search_ids(queries, SearchOptions(k=min(k, len(self.ds)), subsample=subsample))

    def rerank(self, v: Variant, windows: list[Window], chosen: list[list[int]]) -> list[list[int]]:
        """In-Context RALM reranking: order each window's candidates by log p(last q context tokens |
        passage, the context before them), best first (ties keep the retriever's order)."""
        reqs, owners = [], []
        for i, (w, cand) in enumerate(zip(windows, chosen, strict=True)):
            ctx = w.context_ids
            r = min(v.query_tokens, len(ctx) - 1)
            if r < 1 or len(cand) < 2:
                continue
            for p in cand:
                reqs.append(ScoreRequest(prepend([self.passage_ids(p)], ctx, self.limit), r))
                owners.append((i, p))
        scores: dict[int, list[tuple[float, int, int]]] = {}
        for (i, p), lp in zip(owners, self.score(reqs), strict=True):
            scores.setdefault(i, []).append((-float(lp.sum()), len(scores.get(i, [])), p))
        return [[p for _, _, p in sorted(scores[i])] if i in scores else c for i, c in enumerate(chosen)]

    # -- caches ----------------------------------------------------------------------------------------
    def passage_text(self, i: int) -> str:
        if i not in self._texts:
            self._texts[i] = self.ds.passage(i)
        return self._texts[i]

    def passage_ids(self, i: int) -> np.ndarray:
        if i not in self._passage_ids:
            self._passage_ids[i] = self.lm.encode(self.passage_text(i) + SEPARATOR)[0]
        return self._passage_ids[i]

    def score(self, requests: list[ScoreRequest]) -> list[np.ndarray]:
        """lm.score over the distinct requests only (identical inputs across variants are scored once)."""
        keys = [(r.ids.tobytes(), r.n_target) for r in requests]
        firsts: dict[tuple, ScoreRequest] = {}
        for r, key in zip(requests, keys, strict=True):
            firsts.setdefault(key, r)
        scored = dict(zip(firsts, self.lm.score(list(firsts.values()), batch_size=self.batch_size,
                                                show_progress=self.show_progress), strict=True))
        return [scored[key] for key in keys]


def merge_blocks(blocks: list[tuple[int, int, int]], chosen: list[list[int]]) -> list[tuple[int, int, int, list[int]]]:
    """Runs of consecutive In-Context RALM blocks (window i, [a, b)) with the same passages, as
    (i, first a, last b, passages): one LM input covers the run."""
    runs: list[tuple[int, int, int, list[int]]] = []
    for (i, a, b), c in zip(blocks, chosen, strict=True):
        if runs and runs[-1][0] == i and runs[-1][2] == a and runs[-1][3] == c:
            runs[-1] = (i, runs[-1][1], b, c)
        else:
            runs.append((i, a, b, c))
    return runs
