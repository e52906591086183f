"""Training RETRO (or the same decoder without retrieval): AdamW, warm-up + cosine decay, clipping,
safetensors checkpoints with resume, periodic held-out evaluation in loss and bits per byte.

The batch order is a pure function of (seed, step): epoch e visits the training sequences in
permutation rng(seed + e), so a resumed run draws exactly the batches the uninterrupted run would
have, and resuming from a checkpoint continues the same run. Checkpoints hold the trainable
parameters (all of them for a model trained from scratch; only the inserted layers for a retrofit,
whose base weights are re-read from the base model), the AdamW state, the step, and the configs; each
one is a directory swapped in atomically by rewriting checkpoint.json (see write_checkpoint).

GPU paths: bf16 autocast on CUDA (fp16 with a GradScaler where bf16 is missing), and DDP when launched
with torchrun (WORLD_SIZE > 1: each rank takes every WORLD_SIZE-th sequence of a batch). Neither can
run on this CPU-only machine; they follow the PyTorch recipes and are kept behind `device`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..progress import progress
from .data import IGNORE, ChunkStream

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 1000
    batch_size: int = 8
    seq_chunks: int = 4  # sequence length T = seq_chunks · chunk_size
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    eval_every: int = 200
    eval_sequences: int = 64
    checkpoint_every: int = 200
    log_every: int = 10
    seed: int = 0
    retrieval: bool = True  # False: the same decoder trained without retrieval (the baseline)
    device: str = "auto"

    def __post_init__(self):
        for name in ("steps", "batch_size", "seq_chunks", "eval_every", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        if not 0 < self.min_lr <= self.lr:
            raise ConfigError(f"need 0 < min_lr ≤ lr, got min_lr={self.min_lr}, lr={self.lr}")
        if self.warmup < 0 or self.grad_clip <= 0:
            raise ConfigError("warmup must be ≥ 0 and grad_clip > 0")


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to lr over `warmup` steps, then cosine decay to min_lr at `steps` (nanoGPT's schedule)."""
    if cfg.warmup and step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress_ = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.min_lr + 0.5 * (1 + math.cos(math.pi * progress_)) * (cfg.lr - cfg.min_lr)


def batch_starts(train_starts: np.ndarray, step: int, batch_size: int, seed: int) -> np.ndarray:
    """The training batch of `step`: a slice of epoch e's seeded permutation (pure in step)."""
    n = len(train_starts)
    per_epoch = max(1, n // batch_size)
    epoch, i = divmod(step, per_epoch)
    perm = np.random.default_rng(seed + epoch).permutation(n)
    return train_starts[np.sort(perm[i * batch_size : (i + 1) * batch_size])]


def to_torch(batch: dict[str, np.ndarray], device) -> dict[str, Any]:
    import torch

    return {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in batch.items()}


def model_inputs(batch: dict[str, Any], retrieval: bool, fusion: str = "retro") -> dict[str, Any]:
    """Keyword arguments of RetroModel.forward for a batch: neighbour tokens for fusion "retro",
    passage vectors for "relm"."""
    kw = {"targets": batch["targets"], "retrieval": retrieval}
    if retrieval and fusion == "relm":
        if "passage_vectors" not in batch:
            raise ConfigError("fusion 'relm' reads passage vectors: give the stream the datastore's embeddings")
        kw["passage_vectors"], kw["vector_mask"] = batch["passage_vectors"], batch["vector_mask"]
    elif retrieval:
        kw["neighbours"], kw["neighbour_mask"] = batch["neighbours"], batch["neighbour_mask"]
    return kw


def pick_device(device: str) -> str:
    from ..devices import resolve_device

    return resolve_device(device)


# -- checkpoints on disk ---------------------------------------------------------------------------------
# A checkpoint is one unit swapped in atomically:
#
#   OUT/checkpoints/step-NNNNNNN/{model.safetensors, optimizer.safetensors, state.json}
#   OUT/checkpoint.json   {"format", "step", "dir": "checkpoints/step-NNNNNNN", "files": {name: {size, sha256}}}
#   OUT/state.json        a copy of the live state.json for people and scripts (never read back when
#                         checkpoint.json exists; after a crash it may lag one checkpoint behind)
#
# The step directory is written first (each file to NAME.tmp, fsynced, renamed; then the directory
# fsynced); os.replace of checkpoint.json is the commit; older step directories are removed after it.
# A kill at any point leaves checkpoint.json naming either the previous complete checkpoint or the new
# one. Readers use only what checkpoint.json names and check each file's size and hash. A run directory in
# the earlier flat layout (state.json beside model.safetensors, no checkpoint.json) is still read.

CHECKPOINT = "checkpoint.json"
CHECKPOINTS = "checkpoints"
CHECKPOINT_FORMAT = "relm-retro-checkpoint/1"
CHECKPOINT_FILES = ("model.safetensors", "optimizer.safetensors", "state.json")
_STEP_DIR = re.compile(r"step-\d{7,}(-\d+)?")


def _damaged(path: Path, problem: str) -> ConfigError:
    run = path.parent.parent.parent if path.parent.parent.name == CHECKPOINTS else path.parent
    return ConfigError(f"{path}: {problem}; the run is damaged: train it again (delete {run} or pass another "
                       "--out), or restore the run directory from a copy")


def _fsync_dir(path: Path) -> None:
    if os.name != "posix":  # directories cannot be opened for fsync elsewhere
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durable(path: Path, data: bytes) -> dict[str, Any]:
    """`data` to path (via path.tmp, fsynced, renamed); its size and sha256."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _remove_tree(path: Path) -> None:
    """rm -r with one os.remove / os.rmdir per entry on full paths (no fd-relative calls)."""
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
        return
    for dirpath, dirnames, filenames in os.walk(path, topdown=False):
        for name in filenames:
            os.remove(os.path.join(dirpath, name))
        for name in dirnames:
            full = os.path.join(dirpath, name)
            os.remove(full) if os.path.islink(full) else os.rmdir(full)
    os.rmdir(path)


def _live_dir(out: Path) -> str | None:
    """The step directory checkpoint.json names (None when it is missing or unreadable)."""
    try:
        pointer = json.loads((out / CHECKPOINT).read_text(encoding="utf-8"))
        return Path(pointer["dir"]).name
    except (OSError, ValueError, TypeError, KeyError):
        return None


def write_checkpoint(out: str | Path, step: int, files: dict[str, bytes]) -> Path:
    """Write `files` as the checkpoint of `step` in run directory `out` and make it the live one
    atomically (the layout above); returns its step directory."""
    out = Path(out)
    root = out / CHECKPOINTS
    name = f"step-{step:07d}"
    if _live_dir(out) == name:  # the same step saved again (a run restarted without resume): a new name
        name += "-2"
    target = root / name
    if not root.is_dir():
        root.mkdir(parents=True)
    if target.exists() or target.is_symlink():  # left by an interrupted save: never named by checkpoint.json
        _remove_tree(target)
    target.mkdir()
    entries = {fname: _write_durable(target / fname, data) for fname, data in files.items()}
    _fsync_dir(target)
    _fsync_dir(root)
    pointer = {"format": CHECKPOINT_FORMAT, "step": step, "dir": f"{CHECKPOINTS}/{name}", "files": entries}
    _write_durable(out / CHECKPOINT, (json.dumps(pointer, indent=2) + "\n").encode())  # the commit
    _fsync_dir(out)
    if "state.json" in files:
        _write_durable(out / "state.json", files["state.json"])
    remove_stray_checkpoints(out, name)
    return target


def remove_stray_checkpoints(out: str | Path, keep: Checkpoint | str | None) -> None:
    """Remove what no checkpoint.json names: other step directories, temporary files of an interrupted
    save, and (once checkpoint.json exists) the flat-layout weights it supersedes."""
    out = Path(out)
    if isinstance(keep, Checkpoint):
        if keep.files is None:  # the flat layout: its files are the live checkpoint
            return
        keep = keep.dir.name
    root = out / CHECKPOINTS
    if root.is_dir():
        for entry in sorted(root.iterdir()):
            if entry.name != keep:
                _remove_tree(entry)
    if keep is not None:
        for fname in ("model.safetensors", "optimizer.safetensors"):
            if (out / fname).exists():
                os.remove(out / fname)
    for fname in (CHECKPOINT + ".tmp", "state.json.tmp"):
        if (out / fname).exists():
            os.remove(out / fname)


@dataclass
class Checkpoint:
    """The live checkpoint of a run directory: where its files are, their sizes and hashes (None for a run
    in the flat layout) and its parsed state."""

    run: Path
    dir: Path
    files: dict[str, dict[str, Any]] | None
    state: dict[str, Any]

    def read_bytes(self, name: str) -> bytes:
        path = self.dir / name
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise _damaged(path, "missing") from None
        except OSError as e:
            raise _damaged(path, f"cannot be read ({e.strerror or e})") from None
        if self.files is not None:
            want = self.files[name]
            if len(data) != want["size"]:
                raise _damaged(path, f"{len(data):,} bytes where {CHECKPOINT} records {want['size']:,} "
                                     f"({'truncated' if len(data) < want['size'] else 'overwritten'})")
            if hashlib.sha256(data).hexdigest() != want["sha256"]:
                raise _damaged(path, f"its sha256 differs from the one {CHECKPOINT} records (the file was "
                                     "changed or corrupted)")
        return data

    def tensors(self, name: str) -> dict[str, Any]:
        from safetensors.torch import load

        data = self.read_bytes(name)
        try:
            return load(data)
        except Exception as e:  # SafetensorError and kin: the bytes are not a safetensors file
            raise _damaged(self.dir / name, f"truncated or not a safetensors file ({e})") from None


def _read_json_object(path: Path, data: bytes | None = None) -> dict[str, Any]:
    try:
        if data is None:
            data = path.read_bytes()
        obj = json.loads(data.decode("utf-8"))
    except FileNotFoundError:
        raise _damaged(path, "missing") from None
    except OSError as e:
        raise _damaged(path, f"cannot be read ({e.strerror or e})") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise _damaged(path, f"truncated or not JSON ({e})") from None
    if not isinstance(obj, dict):
        kind = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(type(obj), "a number")
        raise _damaged(path, f"holds {kind}, not a JSON object")
    return obj


def _check_state(path: Path, state: dict[str, Any]) -> dict[str, Any]:
    for key, kind in (("step", int), ("history", list), ("train", dict), ("model", dict)):
        if not isinstance(state.get(key), kind) or isinstance(state.get(key), bool):
            raise _damaged(path, f"its {key!r} is missing or not of type {kind.__name__}")
    return state


def read_checkpoint(out: str | Path) -> Checkpoint | None:
    """The live checkpoint of run directory `out`: the one checkpoint.json names (sizes checked, state.json's
    hash checked), or a flat-layout run's files; None when `out` holds no checkpoint. A damaged one raises
    ConfigError naming the file."""
    out = Path(out)
    pointer_path = out / CHECKPOINT
    if pointer_path.exists():
        pointer = _read_json_object(pointer_path)
        if pointer.get("format") != CHECKPOINT_FORMAT:
            raise _damaged(pointer_path, f"format {pointer.get('format')!r}, not {CHECKPOINT_FORMAT!r} (written by "
                                         "another relm version?)")
        where, files = pointer.get("dir"), pointer.get("files")
        if not isinstance(where, str) or Path(where).parent != Path(CHECKPOINTS) or \
                not _STEP_DIR.fullmatch(Path(where).name):
            raise _damaged(pointer_path, f"'dir' is {where!r}, not {CHECKPOINTS}/step-NNNNNNN")
        if not isinstance(files, dict) or set(files) != set(CHECKPOINT_FILES) or not all(
                isinstance(f, dict) and isinstance(f.get("size"), int) and isinstance(f.get("sha256"), str)
                for f in files.values()):
            raise _damaged(pointer_path, f"'files' does not list {', '.join(CHECKPOINT_FILES)} with size and sha256")
        ck = Checkpoint(out, out / where, files, {})
        for fname in CHECKPOINT_FILES:  # every file is there, whole, before anything is read
            path = ck.dir / fname
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                raise _damaged(path, f"missing (named by {pointer_path})") from None
            if size != files[fname]["size"]:
                raise _damaged(path, f"{size:,} bytes where {CHECKPOINT} records {files[fname]['size']:,} "
                                     f"({'truncated' if size < files[fname]['size'] else 'overwritten'})")
        state_path = ck.dir / "state.json"
        ck.state = _check_state(state_path, _read_json_object(state_path, ck.read_bytes("state.json")))
        if ck.state["step"] != pointer.get("step"):
            raise _damaged(state_path, f"step {ck.state['step']} where {CHECKPOINT} records {pointer.get('step')}")
        return ck
    if (out / "state.json").exists():
        if not (out / "model.safetensors").exists():
            if (out / CHECKPOINTS).is_dir():  # state.json is then the copy; the pointer is what went
                raise _damaged(pointer_path, f"missing, though {out / CHECKPOINTS} exists: nothing names the "
                                             "live checkpoint")
            raise _damaged(out / "model.safetensors", "missing (the run has state.json)")
        # the flat layout of earlier versions (any checkpoints/ beside it is an interrupted first new save)
        state = _check_state(out / "state.json", _read_json_object(out / "state.json"))
        return Checkpoint(out, out, None, state)
    return None


class Trainer:
    """Owns the optimizer, the schedule and the checkpoint directory of one run."""

    def __init__(self, model, train: ChunkStream, train_starts: np.ndarray, cfg: TrainConfig, out: str | Path, *,
                 held_out: ChunkStream | None = None, held_out_starts: np.ndarray | None = None,
                 chunk_bytes: np.ndarray | None = None, extra_config: dict | None = None):
        import torch

        self.cfg, self.out = cfg, Path(out)
        self.device = pick_device(cfg.device)
        self.model = model.to(self.device)
        self.train_stream, self.train_starts = train, np.asarray(train_starts)
        if len(self.train_starts) == 0:
            raise ConfigError("no training sequences: the stream is shorter than one sequence")
        self.held_out, self.held_out_starts = held_out, held_out_starts
        self.chunk_bytes = chunk_bytes  # bytes of each held-out chunk, for bits per byte
        self.extra_config = extra_config or {}
        params = [p for p in model.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
            fused=self.device.startswith("cuda"),
        )
        self.amp_dtype = None
        if self.device.startswith("cuda"):
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.ddp = None
        if self.world > 1:  # torchrun: one process per GPU
            torch.distributed.init_process_group("nccl" if self.device.startswith("cuda") else "gloo")
            self.ddp = torch.nn.parallel.DistributedDataParallel(self.model)
        self.step = 0
        self.history: list[dict[str, Any]] = []

    # -- checkpoints ---------------------------------------------------------------------------------
    def trainable_state(self) -> dict[str, Any]:
        return {n: p.detach().cpu().contiguous() for n, p in self.model.named_parameters() if p.requires_grad}

    def save(self) -> Path:
        """Write the current step as one checkpoint (see write_checkpoint); only rank 0 writes."""
        from safetensors.torch import save as to_bytes

        if self.rank:
            return self.out
        opt = {}
        names = {id(p): n for n, p in self.model.named_parameters()}
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                for key, value in self.optimizer.state.get(p, {}).items():
                    opt[f"{names[id(p)]}::{key}"] = value.detach().cpu().reshape(-1) if value.dim() else \
                        value.detach().cpu().reshape(1)
        state = {"step": self.step, "history": self.history, "train": asdict(self.cfg),
                 "model": self.model.config.to_dict(), **self.extra_config}
        write_checkpoint(self.out, self.step, {
            "model.safetensors": to_bytes(self.trainable_state()),
            "optimizer.safetensors": to_bytes(opt),
            "state.json": (json.dumps(state, indent=2) + "\n").encode(),
        })
        return self.out

    def resume(self) -> bool:
        """Load the checkpoint that `out/checkpoint.json` names, if there is one (refusing one from another
        model config, or a damaged one, with a ConfigError naming the file)."""
        import torch

        ck = read_checkpoint(self.out)
        if not self.rank:
            remove_stray_checkpoints(self.out, ck)
        if ck is None:
            return False
        state = ck.state
        if state["model"] != self.model.config.to_dict():
            raise ConfigError(f"{self.out}: the checkpoint is from another model config; use another --out")
        weights = ck.tensors("model.safetensors")
        missing = {n for n, p in self.model.named_parameters() if p.requires_grad} - set(weights)
        if missing:
            raise ConfigError(f"{self.out}: checkpoint lacks {sorted(missing)[:3]}...; it is not from this run")
        opt = ck.tensors("optimizer.safetensors")
        with torch.no_grad():
            params = dict(self.model.named_parameters())
            for n, w in weights.items():
                params[n].copy_(w.to(params[n].device, params[n].dtype))
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                name = next(n for n, q in params.items() if q is p)
                st = {}
                for key in ("step", "exp_avg", "exp_avg_sq"):
                    if f"{name}::{key}" in opt:
                        v = opt[f"{name}::{key}"].to(p.device)
                        st[key] = v.reshape(()) if key == "step" else v.reshape(p.shape)
                if st:
                    self.optimizer.state[p] = st
        self.step, self.history = int(state["step"]), list(state["history"])
        log.info("resumed %s at step %d", self.out, self.step)
        return True

    # -- the loop ------------------------------------------------------------------------------------
    def train(self, *, resume: bool = True, show_progress: bool | None = None,
              until: int | None = None) -> list[dict[str, Any]]:
        """Train to cfg.steps (or stop early at step `until`, as an interruption would; a later call with
        resume=True continues the same run)."""
        import torch

        cfg = self.cfg
        stop = min(cfg.steps, until or cfg.steps)
        if resume:
            self.resume()
        model = self.ddp or self.model
        model.train()
        t0, tokens_done, first = time.perf_counter(), 0, self.step
        with progress(total=cfg.steps, initial=self.step, desc="retro train", unit="step",
                      enabled=show_progress) as bar:
            while self.step < stop:
                lr = lr_at(self.step, cfg)
                for g in self.optimizer.param_groups:
                    g["lr"] = lr
                starts = batch_starts(self.train_starts, self.step, cfg.batch_size, cfg.seed)
                starts = starts[self.rank :: self.world]
                batch = to_torch(self.train_stream.batch(starts, cfg.seq_chunks), self.device)
                with torch.autocast(self.device.split(":")[0], dtype=self.amp_dtype,
                                    enabled=self.amp_dtype is not None):
                    _, loss = model(batch["tokens"], **model_inputs(batch, cfg.retrieval, self.model.config.fusion))
                self.optimizer.zero_grad(set_to_none=True)
                if self.scaler:
                    self.scaler.scale(loss).backward()
                    self.scaler.unscale_(self.optimizer)
                else:
                    loss.backward()
                norm = torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad],
                                                      cfg.grad_clip)
                if self.scaler:
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                else:
                    self.optimizer.step()
                self.step += 1
                tokens_done += int((batch["targets"] != IGNORE).sum())
                bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    rec = {"step": self.step, "loss": float(loss.detach()), "lr": lr, "grad_norm": float(norm),
                           "tokens_per_s": tokens_done / (time.perf_counter() - t0)}
                    self.history.append(rec)
                    bar.set_postfix(loss=f"{rec['loss']:.3f}", tok_s=f"{rec['tokens_per_s']:.0f}")
                    if bar.disable:  # no bar (a log file, CI): the same figures as a log line, with the ETA
                        log.info("%s", step_line(rec, cfg.steps, time.perf_counter() - t0, self.step - first))
                if self.held_out is not None and (self.step % cfg.eval_every == 0 or self.step == cfg.steps):
                    ev = self.evaluate(self.held_out, self.held_out_starts[: cfg.eval_sequences], cfg.retrieval)
                    self.history.append({"step": self.step, "held_out": ev})
                    log.info("step %d: held-out loss %.4f, bpb %.4f", self.step, ev["loss"], ev["bits_per_byte"])
                    model.train()
                if self.step % cfg.checkpoint_every == 0 or self.step in (cfg.steps, stop):
                    self.save()
        return self.history

    def evaluate(self, stream: ChunkStream, starts: np.ndarray, retrieval: bool) -> dict[str, float]:
        return evaluate_sequences(self.model, stream, starts, self.cfg.seq_chunks, retrieval,
                                  self.chunk_bytes, batch_size=self.cfg.batch_size, device=self.device)


def step_line(rec: dict[str, Any], steps: int, elapsed: float, done: int) -> str:
    """'step 70/700 loss 6.112 lr 9.0e-04 345 tok/s ETA 1:04:12' for a log file, from `done` steps in
    `elapsed` seconds of this process."""
    left = (steps - rec["step"]) * elapsed / max(1, done)
    h, rest = divmod(int(left), 3600)
    return (f"step {rec['step']}/{steps} loss {rec['loss']:.3f} lr {rec['lr']:.1e} "
            f"{rec['tokens_per_s']:.0f} tok/s ETA {h}:{rest // 60:02d}:{rest % 60:02d}")


def evaluate_sequences(model, stream: ChunkStream, starts: np.ndarray, seq_chunks: int, retrieval: bool,
                       chunk_bytes: np.ndarray | None, *, batch_size: int = 8, device: str = "cpu",
                       per_chunk: bool = False, score_from: int | np.ndarray = 0) -> dict[str, Any]:
    """Mean loss (nats/token), perplexity and bits per byte of `model` on the sequences at `starts`;
    per_chunk=True also returns each chunk's NLL in nats, keyed by stream row ("chunk_nll").

    score_from: sliding-window evaluation: only chunks at positions ≥ score_from of a window are scored
    (the earlier ones are its context); an int for every window or one value per start."""
    import torch

    model.eval()
    m = stream.chunk_size
    nll_rows: dict[int, float] = {}
    total, count = 0.0, 0
    first = np.broadcast_to(np.asarray(score_from, dtype=np.int64), (len(starts),)).copy()
    with torch.inference_mode():
        for a in range(0, len(starts), batch_size):
            s = np.asarray(starts[a : a + batch_size])
            batch = to_torch(stream.batch(s, seq_chunks), device)
            kw = model_inputs(batch, retrieval, model.config.fusion)
            targets = kw.pop("targets")
            logits, _ = model(batch["tokens"], **kw)
            lp = torch.log_softmax(logits.float(), -1)
            valid = targets != IGNORE
            from_ = torch.as_tensor(first[a : a + batch_size], device=valid.device)
            scored = torch.arange(seq_chunks, device=valid.device)[None, :] >= from_[:, None]  # (B, L)
            valid = valid & scored.repeat_interleave(m, dim=1)  # (B, T)
            nll = -lp.gather(-1, targets.clamp(min=0)[..., None])[..., 0] * valid  # (B, T)
            total += float(nll.sum())
            count += int(valid.sum())
            per = nll.reshape(len(s), seq_chunks, m).sum(-1).cpu().numpy()  # (B, L)
            for b, st in enumerate(s):
                for u in range(seq_chunks):
                    if scored[b, u]:
                        nll_rows[int(st) + u] = float(per[b, u])
    out: dict[str, Any] = {"loss": total / max(count, 1), "perplexity": math.exp(total / max(count, 1)),
                           "tokens": count}
    if chunk_bytes is not None:
        rows = np.array(sorted(nll_rows))
        nbytes = int(np.asarray(chunk_bytes)[rows].sum())
        out["bits_per_byte"] = sum(nll_rows.values()) / math.log(2) / max(nbytes, 1)
        out["bytes"] = nbytes
    else:
        out["bits_per_byte"] = float("nan")
    if per_chunk:
        out["chunk_nll"] = nll_rows
    return out
