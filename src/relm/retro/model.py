"""RETRO: a Llama decoder that reads retrieved neighbours through chunked cross-attention.

Borgeaud et al. 2021, "Improving language models by retrieving from trillions of tokens" (arXiv:2112.04426).
The sequence is split into chunks of m tokens; every chunk C_u has k retrieved neighbours of r tokens
(a neighbour chunk plus its continuation). A small bidirectional encoder turns each neighbour into r
vectors, conditioned on the decoder's hidden states of C_u; decoder layers listed in `cca_layers` then
run a chunked cross-attention (CCA) from their hidden states to those encodings.

Dimension legend (shape comments):
    B batch, T tokens, L chunks (ceil(T / m)), m chunk size, k neighbours per chunk, r neighbour length,
    N memory rows per chunk (k * r for fusion "retro", k for "relm"), C memory width (E or D),
    D d_model, E encoder width (enc_d_model), H heads, Hkv key/value heads, h head size, V vocab,
    P passage_dim.

Design notes:
- The decoder is Llama exactly, with transformers' module names (embed_tokens, layers.i.self_attn.q_proj,
  input_layernorm, ...), so `from_llama` is a prefix rename and the numerics match LlamaForCausalLM.
- Causal shift (paper Sec. 2.4): position t reads the neighbours of chunk u = (t + 1) // m - 1, i.e. the
  last token of C_u and the first m - 1 tokens of C_{u+1} attend to C_u's neighbours; t < m - 1 reads
  nothing (zero CCA output). Neighbours of a chunk are therefore never visible before the chunk is complete.
- Encoder width: neighbour tokens use the decoder's (shared) embedding, are projected D -> E (identity when
  E == D), run `enc_layers` layers of width E and stay at width E: each CCA projects its keys and values
  from E, so no E -> D projection is needed. The encoder's cross-attention reads the RMS-normed decoder
  hidden states of the retrieving chunk at the first CCA layer (after its self-attention, before its CCA).
- CCA uses no positional encoding (the paper uses relative positions): neighbour token order is already
  encoded by the encoder's rotary self-attention, and each query is a residual stream that knows its
  context. Every CCA output projection starts at zero, so inserting CCA leaves the decoder unchanged.
- Fusion "relm": instead of neighbour tokens, one passage embedding vector (P) per neighbour is projected
  to D and normed; CCA then attends over the k vectors of the chunk, with the same causal shift.
- Decoding: `DecodeState` carries the self-attention KV cache, the first-CCA-layer hidden states of the
  current incomplete chunk (the encoder needs all m of them once the chunk completes) and the encoded
  memory of every completed chunk; a full forward is the same code run once on a fresh state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..lm.sampling import sample_next

FUSIONS = ("retro", "relm")


def default_cca_layers(n_layers: int) -> list[int]:
    """The paper's RETRO layers, 1-based: every 3rd layer from layer 6, i.e. [6, 9, 12, ...] <= n_layers.

    A model shallower than 6 layers gets its last layer, so that a default config always retrieves.
    """
    return list(range(6, n_layers + 1, 3)) or [n_layers]


@dataclass
class RetroConfig:
    """A RETRO model: a Llama decoder (first block of fields) plus retrieval (second block).

    Fields left None are resolved in __post_init__, so `to_dict` always holds concrete values.
    """

    vocab_size: int = 32000
    d_model: int = 512
    n_layers: int = 12
    n_heads: int = 8
    n_kv_heads: int | None = None  # None: n_heads (no GQA)
    d_ff: int = 1376
    max_seq_len: int = 2048
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = False

    chunk_size: int = 64  # m
    n_neighbours: int = 2  # k
    neighbour_len: int | None = None  # r; None: 2 * chunk_size (neighbour chunk + its continuation)
    cca_layers: list[int] | None = None  # 1-based decoder layers with CCA; None: default_cca_layers(n_layers)
    enc_layers: int = 2
    enc_d_model: int | None = None  # E; None: d_model
    enc_heads: int | None = None  # None: n_heads
    enc_d_ff: int | None = None  # None: d_ff scaled by enc_d_model / d_model
    fusion: str = "retro"  # "retro": encoded neighbour tokens; "relm": one passage vector per neighbour
    passage_dim: int = 384  # P, the passage embedding size read by fusion "relm"
    dropout: float = 0.0
    # rotary positions in CCA (the paper's relative encoding, §B.1.2): attending position j of chunk u+1's
    # window sits at m - 1 + j of the frame [C_u, C_{u+1}], neighbour token p at p of [N, F], so the score
    # sees p - (m - 1 + j) and "the token after mine in the continuation" is one fixed offset ("retro" only)
    cca_positions: bool = True

    def __post_init__(self):
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.neighbour_len is None:
            self.neighbour_len = 2 * self.chunk_size
        if self.cca_layers is None:
            self.cca_layers = default_cca_layers(self.n_layers)
        self.cca_layers = sorted(int(i) for i in self.cca_layers)
        if self.enc_d_model is None:
            self.enc_d_model = self.d_model
        if self.enc_heads is None:
            self.enc_heads = self.n_heads
        if self.enc_d_ff is None:
            self.enc_d_ff = max(1, self.d_ff * self.enc_d_model // max(1, self.d_model))
        self._validate()

    def _validate(self) -> None:
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "max_seq_len",
                     "chunk_size", "n_neighbours", "neighbour_len", "enc_d_model", "enc_heads", "enc_d_ff",
                     "passage_dim"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        _check_heads("d_model", self.d_model, "n_heads", self.n_heads)
        _check_heads("enc_d_model", self.enc_d_model, "enc_heads", self.enc_heads)
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}; "
                              "choose n_kv_heads among the divisors of n_heads")
        if not self.cca_layers:
            raise ConfigError(f"cca_layers is empty; give at least one layer, e.g. [{self.n_layers}]")
        if len(set(self.cca_layers)) != len(self.cca_layers):
            raise ConfigError(f"cca_layers has duplicates: {self.cca_layers}")
        bad = [i for i in self.cca_layers if not 1 <= i <= self.n_layers]
        if bad:
            raise ConfigError(f"cca_layers {bad} are outside [1, n_layers={self.n_layers}]; "
                              "layers are 1-based")
        if self.enc_layers < 0:
            raise ConfigError(f"enc_layers must be >= 0, got {self.enc_layers}")
        if self.fusion not in FUSIONS:
            raise ConfigError(f"unknown fusion {self.fusion!r}; choose from {list(FUSIONS)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RetroConfig:
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ConfigError(f"unknown RetroConfig fields {unknown}; known: {[f.name for f in fields(cls)]}")
        return cls(**{"cca_positions": False, **d})  # configs saved before the field existed had no CCA positions


def _check_heads(dim_name: str, dim: int, heads_name: str, heads: int) -> None:
    if dim % heads:
        raise ConfigError(f"{dim_name}={dim} is not divisible by {heads_name}={heads}; "
                          f"choose {heads_name} among the divisors of {dim_name}")
    if (dim // heads) % 2:
        raise ConfigError(f"head size {dim_name}/{heads_name} = {dim // heads} must be even for rotary "
                          "positions; change either")


# ----------------------------------------------------------------------------------------------------------
# Llama pieces (op order as in transformers' modeling_llama, for matching numerics)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        dtype = x.dtype
        x = x.to(torch.float32)
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rope_cos_sin(start: int, length: int, head_dim: int, theta: float, *, dtype: torch.dtype,
                 device: torch.device) -> tuple[Tensor, Tensor]:
    """cos, sin (length, h) for positions start..start+length-1, computed exactly as HF Llama does."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float, device=device) / head_dim))
    pos = torch.arange(start, start + length, device=device)
    freqs = pos[:, None].float() * inv_freq  # (T, h/2)
    emb = torch.cat((freqs, freqs), dim=-1)  # (T, h)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x (B, H, T, h), cos/sin (T, h)."""
    return (x * cos) + (rotate_half(x) * sin)


class SelfAttention(nn.Module):
    """Llama attention: q/k/v/o without bias, GQA, rotary q and k; causal (decoder) or not (encoder)."""

    def __init__(self, dim: int, n_heads: int, n_kv_heads: int, causal: bool, dropout: float):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.h = n_heads, n_kv_heads, dim // n_heads
        self.causal, self.dropout = causal, dropout
        self.q_proj = nn.Linear(dim, n_heads * self.h, bias=False)
        self.k_proj = nn.Linear(dim, n_kv_heads * self.h, bias=False)
        self.v_proj = nn.Linear(dim, n_kv_heads * self.h, bias=False)
        self.o_proj = nn.Linear(n_heads * self.h, dim, bias=False)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, past: tuple[Tensor, Tensor] | None = None,
                key_mask: Tensor | None = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """x (B, T, dim); past: cached (k, v) (B, Hkv, P, h); key_mask (B, T) True = real token (encoder)."""
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.h).transpose(1, 2)  # (B, H, T, h)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.h).transpose(1, 2)  # (B, Hkv, T, h)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.h).transpose(1, 2)  # (B, Hkv, T, h)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)  # (B, Hkv, P + T, h)
        mask, is_causal = None, False
        if key_mask is not None:
            assert not self.causal, "key padding masks are for the bidirectional encoder"
            mask = key_mask[:, None, None, :]  # (B, 1, 1, T)
        elif self.causal and T > 1:
            n_past = k.shape[2] - T
            is_causal = n_past == 0  # HF's path: no mask, is_causal
            if n_past:
                pos = torch.arange(n_past + T, device=x.device)
                mask = pos[None, :] <= pos[n_past:, None]  # (T, P + T)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, scale=self.h ** -0.5,
                                           dropout_p=self.dropout if self.training else 0.0,
                                           enable_gqa=self.n_kv_heads != self.n_heads)  # (B, H, T, h)
        y = y.transpose(1, 2).reshape(B, T, self.n_heads * self.h)  # (B, T, H * h)
        return self.o_proj(y), (k, v)


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


# ----------------------------------------------------------------------------------------------------------
# Retrieval pieces


class CrossAttention(nn.Module):
    """Multi-head attention from queries (width dq) to a memory (width dm); positions only if given
    (rotary: q_rope (cos, sin) (Tq, h), k_rope (N, h)).

    key_mask (B, N) True = attend. A row with no key to attend gets exactly zero output (no NaN).
    """

    def __init__(self, dq: int, dm: int, n_heads: int, dropout: float):
        super().__init__()
        self.n_heads, self.h, self.dropout = n_heads, dq // n_heads, dropout
        self.q_proj = nn.Linear(dq, dq, bias=False)
        self.k_proj = nn.Linear(dm, dq, bias=False)
        self.v_proj = nn.Linear(dm, dq, bias=False)
        self.o_proj = nn.Linear(dq, dq, bias=False)

    def forward(self, x: Tensor, mem: Tensor, key_mask: Tensor | None = None,
                q_rope: tuple[Tensor, Tensor] | None = None, k_rope: tuple[Tensor, Tensor] | None = None) -> Tensor:
        B, Tq, dq = x.shape
        N = mem.shape[1]
        q = self.q_proj(x).view(B, Tq, self.n_heads, self.h).transpose(1, 2)  # (B, H, Tq, h)
        k = self.k_proj(mem).view(B, N, self.n_heads, self.h).transpose(1, 2)  # (B, H, N, h)
        if q_rope is not None and k_rope is not None:
            q, k = apply_rope(q, *q_rope), apply_rope(k, *k_rope)
        v = self.v_proj(mem).view(B, N, self.n_heads, self.h).transpose(1, 2)  # (B, H, N, h)
        mask = has_key = None
        if key_mask is not None:
            has_key = key_mask.any(-1)  # (B,)
            mask = (key_mask | ~has_key[:, None])[:, None, None, :]  # (B, 1, 1, N); empty rows: keys unmasked
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                           dropout_p=self.dropout if self.training else 0.0)  # (B, H, Tq, h)
        if has_key is not None:
            y = torch.where(has_key[:, None, None, None], y, 0.0)  # rows with nothing to read: exactly zero
        return self.o_proj(y.transpose(1, 2).reshape(B, Tq, dq))  # (B, Tq, dq)


class ChunkedCrossAttention(nn.Module):
    """CCA (paper Sec. 2.4) with the causal shift: position t attends the memory of chunk (t + 1) // m - 1."""

    def __init__(self, d_model: int, d_mem: int, n_heads: int, chunk_size: int, dropout: float,
                 neighbour_len: int | None = None, rope_theta: float = 10000.0):
        """neighbour_len r: rotary relative positions over the memory's k blocks of r tokens (None: none)."""
        super().__init__()
        self.m, self.r, self.theta = chunk_size, neighbour_len, rope_theta
        self.attn = CrossAttention(d_model, d_mem, n_heads, dropout)

    def rope(self, n_mem: int, dtype: torch.dtype, device: torch.device):
        """(q, k) rotary tables: queries at m-1 .. 2m-2, keys at 0..r-1 within each of the k neighbours."""
        if self.r is None:
            return None, None
        h, m = self.attn.h, self.m
        qc, qs = rope_cos_sin(m - 1, m, h, self.theta, dtype=dtype, device=device)
        kc, ks = rope_cos_sin(0, self.r, h, self.theta, dtype=dtype, device=device)
        reps = n_mem // self.r
        return (qc, qs), (kc.repeat(reps, 1), ks.repeat(reps, 1))

    def forward(self, x: Tensor, memory: Tensor | None, memory_mask: Tensor | None, start: int) -> Tensor:
        """x (B, T, D) at positions start..start+T-1; memory (B, Lm, N, C), mask (B, Lm, N) of chunks < Lm."""
        if memory is None or memory.shape[1] == 0:
            return torch.zeros_like(x)
        B, T, D = x.shape
        m, Lm, N, C = self.m, *memory.shape[1:]
        # group positions into attending chunks [(u+1)m - 1, (u+2)m - 1): pad so `start` lands at its offset
        pre = (start + 1) % m
        n_blk = -(-(pre + T) // m)
        x = F.pad(x, (0, 0, pre, n_blk * m - pre - T))  # (B, n_blk * m, D)
        u = torch.arange((start + 1) // m - 1, (start + 1) // m - 1 + n_blk, device=x.device)  # (n_blk,)
        ready = (u >= 0) & (u < Lm)  # u = -1: the first m - 1 positions read nothing
        u = u.clamp(0, Lm - 1)
        mem = memory[:, u].reshape(B * n_blk, N, C)  # (B * n_blk, N, C)
        keep = (memory_mask[:, u] & ready[None, :, None]).reshape(B * n_blk, N)  # (B * n_blk, N)
        q_rope, k_rope = self.rope(N, x.dtype, x.device)
        y = self.attn(x.view(B * n_blk, m, D), mem, keep, q_rope, k_rope)  # (B * n_blk, m, D)
        return y.view(B, n_blk * m, D)[:, pre:pre + T]  # (B, T, D)


class EncoderLayer(nn.Module):
    """Bidirectional self-attention over one neighbour, cross-attention to its chunk's hidden states, MLP."""

    def __init__(self, cfg: RetroConfig):
        super().__init__()
        E, eps = cfg.enc_d_model, cfg.norm_eps
        self.input_layernorm = RMSNorm(E, eps)
        self.self_attn = SelfAttention(E, cfg.enc_heads, cfg.enc_heads, causal=False, dropout=cfg.dropout)
        self.cross_layernorm = RMSNorm(E, eps)
        self.cross_attn = CrossAttention(E, cfg.d_model, cfg.enc_heads, cfg.dropout)
        self.post_attention_layernorm = RMSNorm(E, eps)
        self.mlp = MLP(E, cfg.enc_d_ff)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, key_mask: Tensor, ctx: Tensor) -> Tensor:
        """x (B', r, E), key_mask (B', r), ctx (B', m, D) with B' = B * L * k."""
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, key_mask=key_mask)[0]
        x = x + self.cross_attn(self.cross_layernorm(x), ctx)
        return x + self.mlp(self.post_attention_layernorm(x))


class NeighbourEncoder(nn.Module):
    """Encodes the k neighbours (r tokens each) of L chunks into (B, L, k * r, E) CCA memory."""

    def __init__(self, cfg: RetroConfig):
        super().__init__()
        self.cfg = cfg
        D, E = cfg.d_model, cfg.enc_d_model
        self.proj_in = nn.Linear(D, E, bias=False) if E != D else nn.Identity()
        self.context_norm = RMSNorm(D, cfg.norm_eps)
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.enc_layers))
        self.norm = RMSNorm(E, cfg.norm_eps)

    def forward(self, emb: Tensor, mask: Tensor, ctx: Tensor) -> Tensor:
        """emb (B, L, k, r, D) neighbour embeddings, mask (B, L, k, r), ctx (B, L, m, D) chunk states."""
        B, L, k, r, D = emb.shape
        m, E = ctx.shape[2], self.cfg.enc_d_model
        x = self.proj_in(emb).reshape(B * L * k, r, E)  # (B', r, E)
        key_mask = mask.reshape(B * L * k, r)  # (B', r)
        key_mask = key_mask | ~key_mask.any(-1, keepdim=True)  # a missing neighbour attends to all: no NaN
        ctx = self.context_norm(ctx)[:, :, None].expand(B, L, k, m, D).reshape(B * L * k, m, D)  # (B', m, D)
        cos, sin = rope_cos_sin(0, r, E // self.cfg.enc_heads, self.cfg.rope_theta, dtype=x.dtype,
                                device=x.device)
        for layer in self.layers:
            x = layer(x, cos, sin, key_mask, ctx)
        return self.norm(x).view(B, L, k * r, E)  # (B, L, N, E)


class PassageFusion(nn.Module):
    """ReLM fusion input: each neighbour's passage embedding vector (P) projected to D and normed."""

    def __init__(self, cfg: RetroConfig):
        super().__init__()
        self.proj = nn.Linear(cfg.passage_dim, cfg.d_model, bias=False)
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)

    def forward(self, vectors: Tensor) -> Tensor:
        return self.norm(self.proj(vectors))  # (B, L, k, P) -> (B, L, k, D)


class RetroBlock(nn.Module):
    """One decoder layer: ATTN, then (in RETRO layers) CCA, then FFW; each pre-norm with a residual."""

    def __init__(self, cfg: RetroConfig, with_cca: bool):
        super().__init__()
        D, eps = cfg.d_model, cfg.norm_eps
        self.input_layernorm = RMSNorm(D, eps)
        self.self_attn = SelfAttention(D, cfg.n_heads, cfg.n_kv_heads, causal=True, dropout=cfg.dropout)
        self.cca_norm = RMSNorm(D, eps) if with_cca else None
        d_mem = cfg.enc_d_model if cfg.fusion == "retro" else D
        r = cfg.neighbour_len if cfg.fusion == "retro" and cfg.cca_positions else None
        self.cca = (ChunkedCrossAttention(D, d_mem, cfg.n_heads, cfg.chunk_size, cfg.dropout, r, cfg.rope_theta)
                    if with_cca else None)
        self.post_attention_layernorm = RMSNorm(D, eps)
        self.mlp = MLP(D, cfg.d_ff)
        self.drop = nn.Dropout(cfg.dropout)

    def attention(self, x: Tensor, cos: Tensor, sin: Tensor, past=None) -> tuple[Tensor, tuple]:
        y, kv = self.self_attn(self.input_layernorm(x), cos, sin, past)
        return x + self.drop(y), kv

    def cross_attention(self, x: Tensor, memory: Tensor | None, memory_mask: Tensor | None,
                        start: int) -> Tensor:
        return x + self.drop(self.cca(self.cca_norm(x), memory, memory_mask, start))

    def feed_forward(self, x: Tensor) -> Tensor:
        return x + self.drop(self.mlp(self.post_attention_layernorm(x)))


@dataclass
class DecodeState:
    """What a pass carries to the next one: a forward is one pass on a fresh state, decoding one per token."""

    pos: int = 0  # tokens consumed so far
    retrieval: bool = False  # run the CCA layers at all
    kv: list | None = None  # per layer (k, v) (B, Hkv, pos, h); None: no caching
    hidden: Tensor | None = None  # (B, pos - Lm * m, D) first-CCA-layer states since the last encoded chunk
    memory: Tensor | None = None  # (B, Lm, N, C) encoded neighbours of the Lm chunks completed so far
    memory_mask: Tensor | None = None  # (B, Lm, N)
    pending: Tensor | None = None  # (B, Lp, k, r) tokens or (B, Lp, k, P) vectors, retrieved, not encoded
    pending_mask: Tensor | None = None  # (B, Lp, k, r) or (B, Lp, k)

    def add_pending(self, x: Tensor, mask: Tensor) -> None:
        self.pending = x if self.pending is None else torch.cat([self.pending, x], dim=1)
        self.pending_mask = mask if self.pending_mask is None else torch.cat([self.pending_mask, mask], dim=1)


def is_retrieval_parameter(name: str) -> bool:
    """True for parameters that a Llama base does not have: CCA, the neighbour encoder, the relm fusion."""
    return name.startswith(("encoder.", "fusion.")) or ".cca." in name or ".cca_norm." in name


class RetroModel(nn.Module):
    """RETRO decoder: forward(tokens, neighbours, ...) -> (logits, loss); generate(); from_llama(); freeze_base()."""

    def __init__(self, config: RetroConfig):
        super().__init__()
        self.config = cfg = config
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(RetroBlock(cfg, i + 1 in cfg.cca_layers) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.encoder = NeighbourEncoder(cfg) if cfg.fusion == "retro" else None
        self.fusion = PassageFusion(cfg) if cfg.fusion == "relm" else None
        self.first_cca = cfg.cca_layers[0] - 1  # 0-based: the layer whose hidden states condition the encoder
        self.apply(self._init_weights)
        for block in self.layers:
            if block.cca is not None:  # zero: a fresh CCA leaves the decoder's output unchanged
                nn.init.zeros_(block.cca.attn.o_proj.weight)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    # -- forward ---------------------------------------------------------------------------------------------

    def forward(self, tokens: Tensor, neighbours: Tensor | None = None, neighbour_mask: Tensor | None = None,
                passage_vectors: Tensor | None = None, vector_mask: Tensor | None = None,
                targets: Tensor | None = None, retrieval: bool = True) -> tuple[Tensor, Tensor | None]:
        """tokens (B, T) -> logits (B, T, V), loss (cross-entropy, targets == -100 ignored) or None.

        neighbours (B, L, k, r) with L >= T // m (chunks from T // m on are never read), neighbour_mask the
        same shape, True = real token. Fusion "relm" takes passage_vectors (B, L, k, P) and vector_mask
        (B, L, k) instead (or neighbour_mask, a neighbour counting as present when any of its tokens is).
        retrieval=False, or no neighbours, skips every CCA.
        """
        state = DecodeState()
        retrieved = self._check_retrieved(tokens, neighbours, neighbour_mask, passage_vectors, vector_mask)
        if retrieval and retrieved is not None:
            state.retrieval = True
            state.add_pending(*retrieved)
        logits = self.lm_head(self._run(tokens, state))  # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1), ignore_index=-100)
        return logits, loss

    def _run(self, tokens: Tensor, state: DecodeState) -> Tensor:
        """Decode tokens (B, Tn) at positions state.pos.. into final-normed hidden states (B, Tn, D)."""
        cfg = self.config
        Tn = tokens.shape[1]
        if state.pos + Tn > cfg.max_seq_len:
            raise ConfigError(f"{state.pos + Tn} tokens exceed max_seq_len={cfg.max_seq_len}; "
                              "shorten the input or raise max_seq_len")
        x = self.embed_tokens(tokens)  # (B, Tn, D)
        cos, sin = rope_cos_sin(state.pos, Tn, cfg.d_model // cfg.n_heads, cfg.rope_theta, dtype=x.dtype,
                                device=x.device)
        for i, block in enumerate(self.layers):
            x, kv = block.attention(x, cos, sin, None if state.kv is None else state.kv[i])
            if state.kv is not None:
                state.kv[i] = kv
            if block.cca is not None and state.retrieval:
                if i == self.first_cca:
                    self._extend_memory(x, state)
                x = block.cross_attention(x, state.memory, state.memory_mask, state.pos)
            x = block.feed_forward(x)
        state.pos += Tn
        return self.norm(x)

    def _extend_memory(self, x: Tensor, state: DecodeState) -> None:
        """Encode the neighbours of every chunk that x (B, Tn, D, first CCA layer) completes, into memory."""
        m = self.config.chunk_size
        buf = x if state.hidden is None else torch.cat([state.hidden, x], dim=1)  # from chunk Lm's start
        n_done = 0 if state.memory is None else state.memory.shape[1]
        n_new = (state.pos + x.shape[1]) // m - n_done
        if n_new > 0:
            assert state.pending is not None and state.pending.shape[1] >= n_new, "neighbours are missing"
            B, _, D = buf.shape
            ctx = buf[:, : n_new * m].reshape(B, n_new, m, D)  # (B, Ln, m, D) the chunks' own states
            mem, mask = self._encode(state.pending[:, :n_new], state.pending_mask[:, :n_new], ctx)
            state.pending, state.pending_mask = state.pending[:, n_new:], state.pending_mask[:, n_new:]
            if state.memory is not None:
                mem = torch.cat([state.memory, mem], dim=1)
                mask = torch.cat([state.memory_mask, mask], dim=1)
            state.memory, state.memory_mask = mem, mask
        state.hidden = buf[:, n_new * m:]

    def _encode(self, x: Tensor, mask: Tensor, ctx: Tensor) -> tuple[Tensor, Tensor]:
        """Retrieved chunks -> CCA memory (B, Ln, N, C) and its mask (B, Ln, N)."""
        if self.encoder is not None:
            emb = self.embed_tokens(x)  # (B, Ln, k, r, D): the decoder's embedding, shared
            return self.encoder(emb, mask, ctx), mask.flatten(2)  # (B, Ln, k * r, E), (B, Ln, k * r)
        return self.fusion(x), mask  # (B, Ln, k, D), (B, Ln, k)

    def _check_retrieved(self, tokens, neighbours, neighbour_mask, passage_vectors, vector_mask):
        """Validated (x, mask) for the model's fusion, or None when nothing was retrieved."""
        cfg = self.config
        if cfg.fusion == "retro":
            if passage_vectors is not None:
                raise ConfigError("passage_vectors are read by fusion='relm'; this model has fusion='retro' "
                                  "and reads neighbour tokens: pass neighbours= (B, L, k, r)")
            x, mask, want = neighbours, neighbour_mask, (cfg.n_neighbours, cfg.neighbour_len)
        else:
            if neighbours is not None:
                raise ConfigError("this model has fusion='relm' and reads passage embedding vectors: pass "
                                  "passage_vectors= (B, L, k, passage_dim) instead of neighbours=")
            x, want = passage_vectors, (cfg.n_neighbours, cfg.passage_dim)
            mask = vector_mask
            if mask is None and neighbour_mask is not None:
                mask = neighbour_mask.any(-1)  # a neighbour is present when any of its tokens is
        if x is None:
            return None
        B, T = tokens.shape
        n_read = T // cfg.chunk_size
        if x.dim() != 4 or x.shape[0] != B or tuple(x.shape[2:]) != want or x.shape[1] < n_read:
            raise ConfigError(f"retrieved input has shape {tuple(x.shape)}; expected (B={B}, L>={n_read}, "
                              f"{want[0]}, {want[1]}) for {T} tokens in chunks of {cfg.chunk_size}: "
                              "pad missing neighbours and mark them False in the mask")
        mask_shape = x.shape if cfg.fusion == "retro" else x.shape[:3]
        if mask is None:
            mask = torch.ones(mask_shape, dtype=torch.bool, device=x.device)
        if tuple(mask.shape) != tuple(mask_shape):
            raise ConfigError(f"mask has shape {tuple(mask.shape)}; expected {tuple(mask_shape)}")
        return x, mask.bool()

    # -- decoding --------------------------------------------------------------------------------------------

    @torch.no_grad()
    def generate(self, prompt: Tensor, max_new_tokens: int, *,
                 retrieve: Callable[[np.ndarray], Any] | None = None,
                 temperature: float = 0.0, top_p: float = 1.0, seed: int = 0, use_cache: bool = True,
                 return_logits: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Continue prompt (1, T0) by max_new_tokens tokens; returns (1, T0 + max_new_tokens) ids.

        Whenever the sequence length becomes a multiple of m, retrieve(chunk ids (m,) int64) is called with
        the chunk just completed and returns its neighbours: (k, r) ids or ((k, r) ids, (k, r) mask) for
        fusion "retro", (k, P) vectors or ((k, P), (k,) mask) for "relm"; None = nothing found. With
        use_cache each token is one incremental pass; without, the full sequence is re-run every step.
        return_logits also returns each step's next-token logits (max_new_tokens, V).
        """
        prompt = torch.as_tensor(prompt, dtype=torch.long)
        if prompt.dim() != 2 or prompt.shape[0] != 1 or prompt.shape[1] == 0:
            raise ConfigError(f"generate takes one non-empty prompt of shape (1, T0), "
                              f"got {tuple(prompt.shape)}")
        m, device = self.config.chunk_size, self.embed_tokens.weight.device
        tokens = prompt[0].tolist()
        rng = np.random.default_rng(seed)
        fetched: list[tuple[Tensor, Tensor]] = []  # (neighbours, mask) of each completed chunk, in order
        state, n_fed, steps = None, 0, []
        for _ in range(max_new_tokens):
            while retrieve is not None and len(fetched) < len(tokens) // m:
                chunk = np.asarray(tokens[len(fetched) * m: (len(fetched) + 1) * m], dtype=np.int64)
                fetched.append(self._as_retrieved(retrieve(chunk)))
            if use_cache:
                if state is None:  # prefill the prompt
                    state = DecodeState(retrieval=retrieve is not None, kv=[None] * len(self.layers))
                    new = tokens
                else:
                    new = tokens[-1:]
                for x, mask in fetched[n_fed:]:
                    state.add_pending(x[None, None], mask[None, None])  # (1, 1, k, r)
                n_fed = len(fetched)
                logits = self.lm_head(self._run(torch.tensor([new], device=device), state)[0, -1])  # (V,)
            else:
                logits = self(torch.tensor([tokens], device=device), **self._stacked(fetched))[0][0, -1]
            steps.append(logits)
            tokens.append(sample_next(logits.float().cpu().numpy(), rng, temperature=temperature, top_p=top_p))
        out = torch.tensor([tokens], dtype=torch.long)
        if return_logits:
            return out, torch.stack(steps) if steps else torch.empty(0, self.config.vocab_size)
        return out

    def _as_retrieved(self, result) -> tuple[Tensor, Tensor]:
        """A retrieve() result for one chunk -> (x (k, r) long | (k, P) float, mask (k, r) | (k,) bool)."""
        cfg, device = self.config, self.embed_tokens.weight.device
        if cfg.fusion == "retro":
            shape, dtype = (cfg.n_neighbours, cfg.neighbour_len), torch.long
            mask_shape = shape
        else:
            shape, dtype = (cfg.n_neighbours, cfg.passage_dim), self.lm_head.weight.dtype
            mask_shape = (cfg.n_neighbours,)
        if result is None:
            return torch.zeros(shape, dtype=dtype, device=device), torch.zeros(mask_shape, dtype=torch.bool,
                                                                               device=device)
        x, mask = result if isinstance(result, tuple) else (result, None)
        x = torch.as_tensor(np.asarray(x), dtype=dtype, device=device)
        mask = (torch.ones(mask_shape, dtype=torch.bool, device=device) if mask is None
                else torch.as_tensor(np.asarray(mask), dtype=torch.bool, device=device))
        if tuple(x.shape) != shape or tuple(mask.shape) != mask_shape:
            raise ConfigError(f"retrieve() returned shapes {tuple(x.shape)} and mask {tuple(mask.shape)}; "
                              f"expected {shape} and {mask_shape} (pad missing neighbours, mask them False)")
        return x, mask

    def _stacked(self, fetched: list[tuple[Tensor, Tensor]]) -> dict[str, Tensor]:
        """forward() keyword arguments for the neighbours of every completed chunk (batch of one)."""
        if not fetched:
            return {}
        x = torch.stack([f[0] for f in fetched])[None]  # (1, L, k, r) or (1, L, k, P)
        mask = torch.stack([f[1] for f in fetched])[None]  # (1, L, k, r) or (1, L, k)
        if self.config.fusion == "retro":
            return {"neighbours": x, "neighbour_mask": mask}
        return {"passage_vectors": x, "vector_mask": mask}

    # -- retrofitting ----------------------------------------------------------------------------------------

    @classmethod
    def from_llama(cls, hf_model: nn.Module, **retro_overrides) -> RetroModel:
        """A RetroModel whose decoder is a copy of a transformers LlamaForCausalLM (e.g. SmolLM2).

        retro_overrides set RetroConfig fields (chunk_size, cca_layers, enc_d_model, fusion, ...). The new
        CCA output projections are zero, so the result computes exactly the base model until trained.
        """
        config = RetroConfig(**{**llama_config_fields(hf_model.config), **retro_overrides})
        model = cls(config)
        # our decoder uses HF's module names, minus the "model." prefix
        state = {k.removeprefix("model."): v for k, v in hf_model.state_dict().items()
                 if not k.endswith("rotary_emb.inv_freq")}
        if config.tie_embeddings:
            state["lm_head.weight"] = state["embed_tokens.weight"]
        missing, unexpected = model.load_state_dict(state, strict=False)
        not_loaded = [n for n in missing if not is_retrieval_parameter(n)]
        if unexpected or not_loaded:
            raise ConfigError(f"{type(hf_model).__name__} does not map onto a Llama decoder: unexpected "
                              f"{unexpected[:5]}, not loaded {not_loaded[:5]}")
        return model.to(dtype=next(hf_model.parameters()).dtype)

    def freeze_base(self) -> None:
        """Freeze every decoder parameter a Llama base has; CCA, encoder and relm fusion stay trainable."""
        for name, p in self.named_parameters():
            p.requires_grad_(is_retrieval_parameter(name))

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]


def llama_config_fields(hc) -> dict[str, Any]:
    """RetroConfig decoder fields from a transformers LlamaConfig; ConfigError for what this decoder lacks."""
    rope = dict(getattr(hc, "rope_parameters", None) or getattr(hc, "rope_scaling", None) or {})
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    head_dim = getattr(hc, "head_dim", None) or hc.hidden_size // hc.num_attention_heads
    act = getattr(hc, "hidden_act", "silu")
    problems = [what for what, bad in [
        (f"hidden_act={act!r} (need 'silu')", act != "silu"),
        ("attention_bias=True", getattr(hc, "attention_bias", False)),
        ("mlp_bias=True", getattr(hc, "mlp_bias", False)),
        (f"rope_type={rope_type!r} (need 'default')", rope_type != "default"),
        (f"head_dim={head_dim} != hidden_size / num_attention_heads",
         head_dim * hc.num_attention_heads != hc.hidden_size),
    ] if bad]
    if problems:
        raise ConfigError(f"this Llama config is not supported by RetroModel: {', '.join(problems)}")
    return {
        "vocab_size": hc.vocab_size,
        "d_model": hc.hidden_size,
        "n_layers": hc.num_hidden_layers,
        "n_heads": hc.num_attention_heads,
        "n_kv_heads": getattr(hc, "num_key_value_heads", None) or hc.num_attention_heads,
        "d_ff": hc.intermediate_size,
        "max_seq_len": hc.max_position_embeddings,
        "rope_theta": float(rope.get("rope_theta", getattr(hc, "rope_theta", 10000.0))),
        "norm_eps": hc.rms_norm_eps,
        "tie_embeddings": bool(getattr(hc, "tie_word_embeddings", False)),
    }
