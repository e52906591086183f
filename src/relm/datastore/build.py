"""Streaming, resumable, atomic datastore builds.

Documents stream from the readers through the chunker into a buffer of at most
`shard_size` passages. A full buffer is one *shard*: its passages are encoded
(one `encode` call, so batches are length-sorted as in sentence-transformers),
its embeddings written as `embeddings/shard-NNNNN.npy` and its passage text,
offsets, document records and tokens into `.build/shard-NNNNN/`, and then a
`done.json` marker. Memory is bounded by the shard (and the encoder's batch), not
by the corpus.

A rerun of the same command re-reads the corpus (cheap next to encoding), skips
every shard whose marker exists and continues from the first unfinished one.
When all shards are done, `finalize` concatenates the staged pieces into the
datastore's arrays, writes `manifest.json` last and removes `.build/`. Every
file goes through a temporary name and `os.replace`, so a build killed at any
point resumes to a byte-identical datastore (only `stats.json`, which holds
wall-clock timings, differs).
"""

from __future__ import annotations

import json
import logging
import os
import resource
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..artifacts import (
    AtomicWriter,
    concat_npy,
    read_json,
    save_npy_atomic,
    sha256_file,
    write_json_atomic,
)
from ..config import BuildConfig
from ..corpus.chunking import chunk_tokens, chunk_words
from ..corpus.documents import NO_TIMESTAMP, Document, with_title
from ..corpus.readers import InputFile, ReadStats, read_documents, resolve_inputs
from ..encoders.batching import encode_planned
from ..errors import DatastoreError, InputError
from ..progress import progress
from . import layout as L
from .ids import IdRegistry
from .layout import DEFERRED
from .lock import LOCK, writer_lock
from .manifest import Counts, EmbeddingShard, Manifest

log = logging.getLogger(__name__)


@dataclass
class ShardBuffer:
    """Passages collected for one shard, plus the records of documents that start in it."""

    index: int
    first_passage: int
    texts: list[str] = field(default_factory=list)
    titles: list[str | None] = field(default_factory=list)  # each passage's document title (a shared str)
    doc_index: list[int] = field(default_factory=list)
    tokens: list[np.ndarray] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)
    words: int = 0

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def inputs(self) -> TitledTexts:
        """What the encoder embeds when titles are prepended: each text with its document's title."""
        return TitledTexts(self.texts, self.titles)


class TitledTexts(Sequence):
    """Passage texts with their documents' titles prepended (`with_title`), made one at a time when read.
    Held as strings (`--prepend-title` builds, e.g. BEIR's), the inputs of a shard were a second copy of
    its text for the whole encode, so that peak RSS grew with the shard. (The shared corpus is built
    without titles: its full-corpus peak did not depend on this.)"""

    def __init__(self, texts: list[str], titles: list[str | None]):
        self.texts, self.titles = texts, titles

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [with_title(t, x) for t, x in zip(self.titles[i], self.texts[i], strict=True)]
        return with_title(self.titles[i], self.texts[i])


def _write_texts(path: Path, texts: list[str]) -> np.ndarray:
    """Write `texts` as concatenated UTF-8 to `path` (atomically) one text at a time, so that no copy of
    the shard's text is held beside the strings (at 65,536 passages, tens of MB at the peak of a build);
    returns the uint64 byte offsets (len(texts) + 1)."""
    offsets = np.zeros(len(texts) + 1, dtype=np.uint64)
    pos = 0
    with AtomicWriter(path) as f:
        for i, text in enumerate(texts):
            pos += f.write(text.encode("utf-8"))
            offsets[i + 1] = pos
    return offsets


@dataclass
class Timer:
    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, stage: str, t0: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - t0


def build_datastore(
    inputs: list[str | Path],
    out: str | Path,
    config: BuildConfig = BuildConfig(),
    *,
    overwrite: bool = False,
    show_progress: bool | None = None,
    encoder=None,
    replace_other: bool = False,
    wait: bool = False,
):
    """Build (or resume building) a datastore from corpus files; returns the opened `Datastore`.

    `encoder` may be passed to reuse a loaded encoder; it must match `config.encoder`. The build holds
    the writer lock of `out` (`wait`: queue behind another writer instead of refusing).
    `replace_other`: an unfinished build of other inputs in `out` is discarded instead of refused
    (`relm add` stages its new documents this way).
    """
    from .store import Datastore

    out = Path(out)
    files, plan = _files_and_plan(inputs, out, config)
    with writer_lock(out, wait=wait):
        if _prepare_output(out, plan, overwrite, replace_other):
            log.info("%s is already built with these inputs and settings; nothing to do", out)
            return Datastore.open(out)
        builder = _Builder(out, files, config, show_progress, encoder)
        builder.run()
    return Datastore.open(out)


def _files_and_plan(inputs, out: Path, config: BuildConfig) -> tuple[list[InputFile], dict[str, Any]]:
    """The input files (none inside `out`) and the build plan; `out` checked and created."""
    files = [f for f in resolve_inputs(inputs, config.reader) if not _inside(f.path, out)]
    if not files:
        raise InputError(str(out), None, "missing", "every input lies inside the output directory")
    plan = _plan(files, config)
    _check_out(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DatastoreError(f"--out {out}: cannot create the directory ({e.strerror})") from e
    return files, plan


def _check_out(out: Path) -> None:
    """Refuse an --out that is a file, or a directory of someone else's files."""
    if out.exists() and not out.is_dir():
        raise DatastoreError(f"--out {out} is a file, not a directory; choose another --out")
    if out.is_dir() and not _ours(out):
        raise DatastoreError(f"{out} exists and is not a relm datastore; refusing to write into it")


def _ours(out: Path) -> bool:
    """An empty directory, a datastore, or an unfinished build (what relm may write into)."""
    names = {p.name for p in out.iterdir()}
    return not names - {LOCK} or L.MANIFEST in names or L.STAGING in names


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


def _plan(files: list[InputFile], config: BuildConfig) -> dict[str, Any]:
    """What the datastore is built from: identical plans give identical datastores."""
    return {
        "format_version": L.FORMAT_VERSION,
        "config": config.to_dict(),
        "inputs": [
            {
                "path": f.display,
                "format": f.format,
                "compression": f.compression,
                "domain": f.domain,
                "bytes": f.path.stat().st_size,
                "sha256": sha256_file(f.path),
            }
            for f in files
        ],
    }


def _prepare_output(out: Path, plan: dict[str, Any], overwrite: bool, replace_other: bool = False) -> bool:
    """Make `out` ready for this plan (under the lock). Returns True when it already holds exactly this build.

    The states a build can leave, killed anywhere: nothing; `.build/` (maybe without plan.json yet);
    `.build/` with finished shards; the datastore's files being written beside `.build/`; manifest.json
    written (the datastore is finished) with `.build/` not yet removed. Each is finished or redone here.
    """
    staging = out / L.STAGING
    if (out / L.MANIFEST).exists():
        try:
            done_plan = read_json(out / L.MANIFEST).get("build", {}).get("plan")
        except (ValueError, AttributeError):
            done_plan = None
        if done_plan == plan and not overwrite:
            _remove_leftovers(out)  # killed after the manifest was written: only the clean-up was left
            return True
        if not overwrite:
            raise DatastoreError(
                f"{out} already holds a datastore built from other inputs or settings; "
                "pass --overwrite to replace it, or choose another --out"
            )
        _clear(out, plan)
    elif (staging / "plan.json").exists():
        try:
            staged_plan = read_json(staging / "plan.json")
        except ValueError:
            staged_plan = None
        if staged_plan != plan:
            finished = len(list(staging.glob("shard-*/done.json")))
            if finished and not (overwrite or replace_other):
                raise DatastoreError(
                    f"{out} holds an unfinished build of other inputs or settings ({finished} shard(s) encoded); "
                    "rerun the command that started it to finish it, or pass --overwrite to start over with these"
                )
            log.info("%s: discarding an unfinished build of other inputs or settings", out)
            _clear(out, plan)
        else:
            log.info("resuming the unfinished build in %s", out)
            _clear_outside_staging(out)
    else:
        _clear(out, plan)  # empty, or `.build/` killed before its plan.json: nothing to keep
    staging.mkdir(parents=True, exist_ok=True)
    if not (staging / "plan.json").exists():
        write_json_atomic(staging / "plan.json", plan)
    return False


def _clear(out: Path, plan: dict[str, Any]) -> None:
    """Start over in `out` (checked to be relm's): the new plan first, then the manifest, then the rest,
    so that a kill at any point leaves an unfinished build of this plan that a rerun resumes."""
    staging = out / L.STAGING
    if staging.exists():
        shutil.rmtree(staging)
    write_json_atomic(staging / "plan.json", plan)
    (out / L.MANIFEST).unlink(missing_ok=True)
    _clear_outside_staging(out)


def _clear_outside_staging(out: Path) -> None:
    """Remove everything but `.build/` and the lock: before finalize, all of it is rewritten from `.build/`."""
    for p in out.iterdir():
        if p.name in (L.STAGING, LOCK):
            continue
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()


def _remove_leftovers(out: Path) -> None:
    if (out / L.STAGING).exists():
        shutil.rmtree(out / L.STAGING)
    for tmp in out.rglob("*.tmp"):
        if ".update" not in tmp.relative_to(out).parts:
            tmp.unlink()


class _Builder:
    def __init__(self, out: Path, files: list[InputFile], config: BuildConfig, show_progress, encoder,
                 encode: bool = True):
        self.out = out
        self.encode = encode  # False: text only, vectors deferred (a part of a build split in parts)
        self.staging = out / L.STAGING
        self.files = files
        self.config = config
        self.show_progress = show_progress
        self._encoder = encoder
        self.timer = Timer()
        self.read_stats = ReadStats()
        self.ids = IdRegistry()
        self.tokenizer = None
        if config.chunk.mode == "tokens":
            from ..corpus.tokenizer import load_tokenizer

            self.tokenizer = load_tokenizer(config.chunk.tokenizer)
        self.resumed_shards = 0
        self.encoded_passages = 0
        self.tokens_seen = 0
        self._passage_tokens: int | None | bool = False  # resolved on first use (needs the encoder)

    @property
    def encoder_tokens(self):
        """The encoder's token counter (`EncoderTokens`), or None for an encoder without one."""
        tokens = getattr(self.encoder, "tokens", None)
        return tokens() if tokens is not None else None

    @property
    def passage_tokens(self) -> int | None:
        """The token budget of a passage's encoder input (None: cut by words alone)."""
        if self._passage_tokens is False:
            from ..encoders.tokens import resolve_passage_tokens

            c = self.config.chunk
            if c.mode != "words" or c.max_tokens is None:
                self._passage_tokens = None
            else:
                if c.max_tokens != "auto" and self.encoder_tokens is None:
                    raise DatastoreError(f"--max-tokens {c.max_tokens}: encoder {self.config.encoder.model!r} has no "
                                         "fast tokenizer to count tokens with; pass --max-tokens none")
                self._passage_tokens = resolve_passage_tokens(c.max_tokens, self.encoder_tokens)
        return self._passage_tokens

    # -- encoder (loaded only when a shard needs encoding) ----------------------------------
    @property
    def encoder(self):
        if self._encoder is None:
            from ..encoders import load_encoder

            t0 = time.perf_counter()
            self._encoder = load_encoder(self.config.encoder)
            self.timer.add("load_encoder", t0)
        return self._encoder

    def encoder_identity(self) -> dict[str, Any]:
        path = self.staging / "encoder.json"
        if path.exists():
            return read_json(path)
        from ..encoders.compat import encode_probe

        # the probe: what another backend of this model is compared with when it embeds queries
        ident = dict(self.encoder.identity(), normalize=self.config.encoder.normalize,
                     probe=encode_probe(self.encoder, self.config.encoder.normalize))
        write_json_atomic(path, ident)
        return ident

    # -- main loop ----------------------------------------------------------------------------
    def run(self) -> None:
        t_start = time.perf_counter()
        total_bytes = sum(f.path.stat().st_size for f in self.files)
        bar = progress(total=total_bytes, desc="build", unit="B", unit_scale=True, enabled=self.show_progress)
        shard = ShardBuffer(0, 0)
        n_docs = 0
        last = 0.0
        for doc in self._timed_documents():
            if not self.ids.add(doc.id):
                self._duplicate(doc)
                continue
            self.passage_tokens  # noqa: B018 (resolved once; loads the encoder, timed as load_encoder, not chunk)
            t0 = time.perf_counter()
            pieces = self._chunk(doc)
            self.timer.add("chunk", t0)
            first = True
            for text, toks in pieces:
                if len(shard) == self.config.shard_size:
                    self._flush(shard)
                    shard = ShardBuffer(shard.index + 1, shard.first_passage + len(shard))
                    self.ids.commit()
                if first:
                    shard.records.append(doc.record())
                    first = False
                shard.texts.append(text)
                shard.titles.append(doc.title)
                shard.doc_index.append(n_docs)
                shard.words += len(text.split())
                if toks is not None:
                    shard.tokens.append(toks)
                    self.tokens_seen += len(toks)
            n_docs += 1
            now = time.monotonic()
            if now - last > 0.5:
                last = now
                self._show(bar, n_docs, shard, t_start)
        if len(shard) == 0:
            raise InputError(", ".join(f.display for f in self.files), None, "empty_file",
                             f"no documents could be read (skipped: {self.read_stats.to_dict()['skipped']})")
        self._flush(shard)
        self._show(bar, n_docs, shard, t_start)
        bar.n = total_bytes
        bar.close()
        self.timer.add("total_stream", t_start)
        t0 = time.perf_counter()
        manifest = self._finalize(n_shards=shard.index + 1)
        self.timer.add("finalize", t0)
        self.timer.add("total", t_start)
        self._write_stats(manifest)  # before the manifest: a finished datastore always has its stats
        write_json_atomic(self.out / L.MANIFEST, manifest)
        shutil.rmtree(self.staging)
        warning = truncation_warning(manifest["build"].get("encoder_input"), self.config.chunk.max_tokens)
        if warning:
            log.warning("%s: %s", self.out, warning)

    def _show(self, bar, n_docs: int, shard: ShardBuffer, t_start: float) -> None:
        """Progress in input bytes (that gives the ETA), with passages/s and tokens/s so far."""
        elapsed = max(time.perf_counter() - t_start, 1e-9)
        passages = shard.first_passage + len(shard)
        post = {"docs": n_docs, "passages": passages, "shard": shard.index, "passages/s": f"{passages / elapsed:.1f}"}
        if self.tokenizer is not None:
            post["tokens/s"] = f"{self.tokens_seen / elapsed:.0f}"
        bar.n = self.read_stats.bytes_done
        bar.set_postfix(post, refresh=False)
        bar.refresh()

    def _duplicate(self, doc: Document) -> None:
        error = InputError(
            doc.source.rsplit(":", 1)[0], None, "duplicate_id",
            f"document id {doc.id!r} at {doc.source} was seen before; ids must be unique "
            "(fix the data, pass --id-field with a unique field, or --on-error skip to keep the first)",
        )
        if self.config.reader.on_error == "raise":
            raise error
        self.read_stats.documents -= 1
        self.read_stats.skipped["duplicate_id"] += 1
        if len(self.read_stats.skipped_examples) < 20:
            self.read_stats.skipped_examples.append(str(error))
        log.warning("skipped %s", error)

    def _timed_documents(self) -> Iterator[Document]:
        it = read_documents(self.files, self.config.reader, self.read_stats)
        while True:
            t0 = time.perf_counter()
            try:
                doc = next(it)
            except StopIteration:
                self.timer.add("read", t0)
                return
            self.timer.add("read", t0)
            yield doc

    def _chunk(self, doc: Document) -> list[tuple[str, np.ndarray | None]]:
        c = self.config.chunk
        if c.mode == "words":
            budget = self.passage_tokens
            if budget is None:
                spans = chunk_words(doc.text, c.max_words, c.min_words)
            else:
                from ..encoders.tokens import text_budget_after_title

                tokens = self.encoder_tokens
                if c.prepend_title and doc.title and doc.title.strip():
                    budget = text_budget_after_title(budget, int(tokens.count([doc.title])[0]))
                spans = chunk_words(doc.text, c.max_words, c.min_words, word_tokens=tokens.word_tokens(doc.text),
                                    max_tokens=budget)
            return [(doc.text[a:b], None) for a, b, _ in spans]
        ids, offsets = self.tokenizer.encode(doc.text)
        if len(ids) == 0:
            return [(doc.text, np.zeros(0, dtype=self.tokenizer.id_dtype))]
        dtype = self.tokenizer.id_dtype
        return [
            (doc.text[cs:ce], ids[a:b].astype(dtype))
            for a, b, cs, ce in chunk_tokens(offsets, len(doc.text), c.chunk_tokens)
        ]

    # -- one shard --------------------------------------------------------------------------
    def _flush(self, shard: ShardBuffer) -> None:
        sdir = self.staging / L.shard_name(shard.index)
        done = sdir / "done.json"
        counts = {
            "passages": len(shard),
            "first_passage": shard.first_passage,
            "documents": len(shard.records),
            "words": shard.words,
            "tokens": int(sum(len(t) for t in shard.tokens)),
        }
        if done.exists():
            finished = read_json(done)
            if {k: finished.get(k) for k in counts} != counts:
                raise DatastoreError(
                    f"{sdir}: finished shard does not match the corpus as read now; "
                    "the inputs changed during the build: pass --overwrite to start over"
                )
            self.resumed_shards += 1
            log.info("shard %d already built; skipping", shard.index)
            return
        encoder = self.encoder  # loaded (and timed as load_encoder) before the encode timer starts
        inputs = shard.inputs if self.config.chunk.prepend_title else shard.texts
        t0 = time.perf_counter()
        tokens = self.encoder_tokens
        if tokens is not None:  # how many inputs the encoder cuts: counted, not guessed
            counts["truncated"] = tokens.truncated(inputs)
            counts["max_length"] = tokens.max_length
        self.timer.add("count_tokens", t0)
        vectors = None
        if self.encode:
            t0 = time.perf_counter()
            vectors = encode_planned(encoder, inputs, batch_size=self.config.batch_size,
                                     normalize=self.config.encoder.normalize, show_progress=bool(self.show_progress))
            self.timer.add("encode", t0)
            self.encoded_passages += len(shard)
        t0 = time.perf_counter()
        self.encoder_identity()
        if vectors is not None:
            save_npy_atomic(sdir / "embeddings.npy", vectors)
            del vectors
        offsets = _write_texts(sdir / "text.bin", shard.texts)
        save_npy_atomic(sdir / "offsets.npy", offsets)
        save_npy_atomic(sdir / "doc_index.npy", np.asarray(shard.doc_index, dtype=np.uint32))
        with AtomicWriter(sdir / "records.jsonl") as f:
            for rec in shard.records:
                f.write(_record_line(rec))
        if self.tokenizer is not None:
            dtype = self.tokenizer.id_dtype
            toks = np.concatenate(shard.tokens) if shard.tokens else np.zeros(0, dtype=dtype)
            tok_off = np.zeros(len(shard.tokens) + 1, dtype=np.uint64)
            np.cumsum([len(t) for t in shard.tokens], out=tok_off[1:])
            save_npy_atomic(sdir / "tokens.npy", toks.astype(dtype))
            save_npy_atomic(sdir / "token_offsets.npy", tok_off)
        write_json_atomic(done, counts)
        self.timer.add("write", t0)

    # -- finalize ----------------------------------------------------------------------------
    def _finalize(self, n_shards: int) -> dict[str, Any]:
        dirs = [self.staging / L.shard_name(i) for i in range(n_shards)]
        counts = [read_json(d / "done.json") for d in dirs]
        n = sum(c["passages"] for c in counts)
        n_docs = sum(c["documents"] for c in counts)
        if n_docs >= 2**32 - 1:
            raise DatastoreError(f"{n_docs} documents do not fit uint32 document indexes; split the corpus")
        out = self.out
        for i, d in enumerate(dirs if self.encode else ()):  # a link, not a move: .build/ stays whole until
            dst = out / L.embedding_shard(i)
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.unlink(missing_ok=True)
            try:
                os.link(d / "embeddings.npy", dst)
            except OSError:
                shutil.copyfile(d / "embeddings.npy", dst)
        with AtomicWriter(out / L.PASSAGE_TEXT) as f:
            for d in dirs:
                with open(d / "text.bin", "rb") as src:
                    shutil.copyfileobj(src, f.file, 1 << 22)
        _concat_offsets([d / "offsets.npy" for d in dirs], out / L.PASSAGE_OFFSETS)
        concat_npy([d / "doc_index.npy" for d in dirs], out / L.PASSAGE_DOC, np.uint32)
        domains = self._finalize_docs(dirs, n_docs)
        doc_index = np.load(out / L.PASSAGE_DOC, mmap_mode="r")
        save_npy_atomic(
            out / L.DOC_PASSAGES,
            np.searchsorted(doc_index, np.arange(n_docs + 1), side="left").astype(np.uint64),
        )
        tokens = None
        if self.tokenizer is not None:
            dtype = self.tokenizer.id_dtype
            n_tok = concat_npy([d / "tokens.npy" for d in dirs], out / L.TOKEN_IDS, dtype)
            _concat_offsets([d / "token_offsets.npy" for d in dirs], out / L.TOKEN_OFFSETS)
            tokens = {
                "tokenizer": self.tokenizer.identity(),
                "ids": L.TOKEN_IDS,
                "offsets": L.TOKEN_OFFSETS,
                "dtype": dtype.name,
                "count": n_tok,
            }
        encoder = self.encoder_identity()
        shards = []
        start = 0
        for i, c in enumerate(counts if self.encode else ()):
            shards.append({"file": L.embedding_shard(i), "start": start, "rows": c["passages"]})
            start += c["passages"]
        plan = read_json(self.staging / "plan.json")
        chunker = self.config.chunk.describe()
        if self.config.chunk.mode == "words":
            chunker["passage_tokens"] = self.passage_tokens  # "auto" as resolved for this encoder
        build = {"plan": plan, "read": self.read_stats.to_dict()}
        if all("truncated" in c for c in counts):
            build["encoder_input"] = {"max_length": counts[0]["max_length"], "passages": n,
                                      "truncated": int(sum(c["truncated"] for c in counts))}
        return Manifest(
            kind="tokens" if self.tokenizer is not None else "passages",
            encoder=encoder,
            chunker=chunker,
            tokens=tokens,
            counts=Counts(
                documents=n_docs,
                passages=n,
                words=int(sum(c["words"] for c in counts)),
                tokens=int(sum(c["tokens"] for c in counts)) if tokens else None,
                text_bytes=int((out / L.PASSAGE_TEXT).stat().st_size),
                shards=n_shards if self.encode else 0,
            ),
            dim=encoder["dim"],
            shards=tuple(EmbeddingShard(**s) for s in shards),
            domains=tuple(domains),
            inputs=tuple(plan["inputs"]),
            build=build,
            extra={} if self.encode else {DEFERRED: True},
        ).to_json()

    def _finalize_docs(self, dirs: list[Path], n_docs: int) -> list[dict[str, Any]]:
        """Concatenate document records; derive their offsets, domain codes and timestamps."""
        out = self.out
        offsets = np.zeros(n_docs + 1, dtype=np.uint64)
        domain = np.zeros(n_docs, dtype=np.uint16)
        stamp = np.full(n_docs, NO_TIMESTAMP, dtype=np.int64)
        names: dict[str, int] = {}
        j, pos = 0, 0
        with AtomicWriter(out / L.DOC_RECORDS) as f:
            for d in dirs:
                with open(d / "records.jsonl", "rb") as src:
                    for line in src:
                        rec = json.loads(line)
                        code = names.setdefault(rec["domain"], len(names))
                        if code >= 2**16:
                            raise DatastoreError("more than 65,536 distinct domains; use fewer domain labels")
                        domain[j] = code
                        if rec["timestamp"] is not None:
                            stamp[j] = rec["timestamp"]
                        f.write(line)
                        pos += len(line)
                        j += 1
                        offsets[j] = pos
        if j != n_docs:
            raise DatastoreError(f"internal: {j} document records for {n_docs} documents")
        save_npy_atomic(out / L.DOC_OFFSETS, offsets)
        save_npy_atomic(out / L.DOC_DOMAIN, domain)
        save_npy_atomic(out / L.DOC_TIMESTAMP, stamp)
        counts = np.bincount(domain, minlength=len(names))
        return [{"name": name, "documents": int(counts[code])} for name, code in names.items()]

    def _write_stats(self, m: dict[str, Any]) -> None:
        c = m["counts"]
        sec = {k: round(v, 4) for k, v in self.timer.seconds.items()}
        enc = max(self.timer.seconds.get("encode", 0.0), 1e-9)
        total = max(self.timer.seconds.get("total", 0.0), 1e-9)
        stats = {
            "counts": c,
            "read": m["build"]["read"],
            "seconds": sec,
            "encoder_input": m["build"].get("encoder_input"),
            "resumed_shards": self.resumed_shards,
            "encoded_passages": self.encoded_passages,
            "throughput": {
                "passages_per_s": c["passages"] / total,
                "words_per_s": c["words"] / total,
                "tokens_per_s": (c["tokens"] or 0) / total,
                "encode_passages_per_s": self.encoded_passages / enc,
            },
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }
        write_json_atomic(self.out / L.STATS, stats)
        log.debug(
            "built %s: %d documents, %d passages, %d words in %.1fs (%.1f passages/s)",
            self.out, c["documents"], c["passages"], c["words"], total, c["passages"] / total,
        )


TRUNCATION_WARN_FRACTION = 0.02  # warn when more passages than this are cut by the encoder


def truncation_warning(encoder_input: dict[str, Any] | None, max_tokens) -> str | None:
    """One line when more than 2% of the passages' encoder inputs exceed the encoder's length, else None."""
    if not encoder_input or not encoder_input["passages"]:
        return None
    n, cut = encoder_input["passages"], encoder_input["truncated"]
    if cut <= TRUNCATION_WARN_FRACTION * n:
        return None
    fix = ("rebuild with --max-tokens auto (the default) to cut passages that fit" if max_tokens is None
           else "lower --max-tokens (or --chunk-words)")
    return (f"{cut:,} of {n:,} passages ({cut / n:.1%}) are longer than the encoder's "
            f"{encoder_input['max_length']} tokens and embedded truncated; {fix}")


def merge_encoder_input(parts: list[dict[str, Any] | None]) -> dict[str, Any] | None:
    """The encoder-input counts of datastores built in parts (None when any part was not counted)."""
    if not parts or any(p is None for p in parts):
        return None
    return {"max_length": parts[0]["max_length"], "passages": sum(p["passages"] for p in parts),
            "truncated": sum(p["truncated"] for p in parts)}


def _record_line(rec: dict[str, Any]) -> bytes:
    return (json.dumps(rec, ensure_ascii=False, sort_keys=True, separators=(",", ":")) + "\n").encode("utf-8")


def _concat_offsets(paths: list[Path], out: Path) -> None:
    """Concatenate per-shard (n_i + 1,) offset arrays into one (n + 1,) array of global offsets."""
    parts = [np.load(p, mmap_mode="r") for p in paths]
    total = sum(len(p) - 1 for p in parts)
    tmp = out.with_name(out.name + ".tmp")
    out.parent.mkdir(parents=True, exist_ok=True)
    dest = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint64, shape=(total + 1,))
    row, base = 0, np.uint64(0)
    for p in parts:
        k = len(p) - 1
        dest[row : row + k] = p[:-1] + base
        base = base + np.uint64(p[-1])
        row += k
    dest[total] = base
    dest.flush()
    del dest
    os.replace(tmp, out)
