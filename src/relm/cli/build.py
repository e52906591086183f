"""`relm build INPUT... --out DS`: read, chunk, encode and store a corpus."""

from __future__ import annotations

from ..config import (
    DEFAULT_ENCODER,
    DEFAULT_ENCODER_BACKEND,
    DEFAULT_TOKENIZER,
    ENCODER_BACKENDS,
    BuildConfig,
    ChunkConfig,
    EncoderConfig,
    ReaderConfig,
    parse_max_tokens,
)
from ..distributed.build import DEFAULT_PARTS
from ..distributed.runtime import add_ray_arguments, ray_config
from ..errors import ConfigError
from .common import HelpFormatter, add_progress_flags, add_wait_flag


def register(sub) -> None:
    p = sub.add_parser(
        "build",
        help="build a datastore from corpus files",
        description="Build (or resume) a datastore: JSONL (.gz/.zst), plain text or Parquet files, "
        "directories or globs -> passages or token chunks -> float16 embeddings + metadata.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="files, directories or globs")
    p.add_argument("--out", "-o", required=True, metavar="DS", help="datastore directory to create or resume")
    chunk = p.add_mutually_exclusive_group()
    chunk.add_argument("--chunk-words", type=int, metavar="N", default=ChunkConfig.max_words,
                       help="passage mode (MassiveDS): at most N whitespace words per passage")
    chunk.add_argument("--chunk-tokens", type=int, metavar="M", help="token mode (RETRO): chunks of M tokens")
    p.add_argument("--min-words", type=int, default=ChunkConfig.min_words,
                   help="passage mode: a shorter tail is merged into the previous passage (if it still fits "
                        "--max-tokens)")
    p.add_argument("--max-tokens", default="auto", metavar="auto|N|none",
                   help="passage mode: at most this many encoder tokens per passage, title included, special "
                        "tokens aside (auto: what the encoder reads, 254 for all-MiniLM-L6-v2; none: words "
                        "alone, so longer passages are embedded truncated)")
    p.add_argument("--tokenizer", default=DEFAULT_TOKENIZER,
                   help="token mode: 'smollm2', a local HF tokenizer directory or a .gguf file")
    p.add_argument("--encoder", default=DEFAULT_ENCODER,
                   help="sentence-transformers model name/dir, or a local HF encoder dir (mean pooling)")
    p.add_argument("--no-normalize", action="store_true", help="store raw (not unit-length) embeddings")
    p.add_argument("--max-seq-length", type=int, help="encoder truncation in tokens (default: the model's)")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available; the onnx and openvino backends: cpu)")
    p.add_argument("--encoder-backend", choices=ENCODER_BACKENDS, default=DEFAULT_ENCODER_BACKEND,
                   help="run the encoder with torch; ONNX Runtime in fp32 (onnx) or dynamically quantized int8 "
                        "(onnx-int8); or OpenVINO in fp32 (openvino) or bf16 arithmetic (openvino-bf16, on CPUs "
                        "with AMX or AVX512-BF16). The others are CPU only, files made once into "
                        "$RELM_CACHE/encoders. Recorded in the manifest: queries are embedded with the same backend")
    p.add_argument("--batch-size", type=int, default=BuildConfig.batch_size, help="encoder batch size")
    p.add_argument("--shard-size", type=int, default=BuildConfig.shard_size,
                   help="passages per embedding shard (the unit of resumption)")
    p.add_argument("--domain", action="append", default=[], metavar="D",
                   help="domain label: once for all inputs, or once per input (overrides the domain field)")
    p.add_argument("--text-field", default=ReaderConfig.text_field, help="JSONL/Parquet text field")
    p.add_argument("--id-field", default=ReaderConfig.id_field, help="document id field (else file:line)")
    p.add_argument("--title-field", metavar="F",
                   help="document title field: stored, shown in hits, and prepended to every passage of the "
                        "document for embedding and BM25 (`title + ' ' + text`, as BEIR does). Unset: the "
                        f"'{ReaderConfig.title_field}' field is stored and shown only")
    p.add_argument("--no-prepend-title", action="store_true",
                   help="with --title-field: store and show the title but embed the passage text alone")
    p.add_argument("--domain-field", default=ReaderConfig.domain_field)
    p.add_argument("--timestamp-field", default=ReaderConfig.timestamp_field,
                   help="seconds since the epoch or ISO 8601")
    p.add_argument("--format", default="auto", choices=["auto", "jsonl", "text", "parquet"],
                   help="input format (auto: from the file name)")
    p.add_argument("--text-split", default="file", choices=["file", "blank-line"],
                   help="plain text: one document per file or per blank-line-separated block")
    p.add_argument("--on-error", default="raise", choices=["raise", "skip"],
                   help="bad input: stop with an error, or skip it and count it in the build stats")
    p.add_argument("--overwrite", action="store_true", help="replace an existing datastore at --out")
    add_wait_flag(p)
    add_progress_flags(p)
    add_ray_arguments(p)
    r = p.add_argument_group("distributed build (with --ray)")
    r.add_argument("--encode-actors", type=int, metavar="N",
                   help="encode actors, each loading the encoder once (default: one per CPU of the Ray cluster)")
    r.add_argument("--gpus-per-actor", type=float, default=0.0, metavar="G", help="GPUs requested per encode actor")
    r.add_argument("--threads-per-actor", type=int, default=1, metavar="T",
                   help="CPUs (torch threads) per encode actor; the build equals `relm build` run with as many "
                   "threads (OMP_NUM_THREADS=T)")
    r.add_argument("--parts", type=int, default=DEFAULT_PARTS, metavar="N",
                   help="parts (files[r::N]) to read and chunk in parallel, each the unit of resumption of that "
                   "phase; encoding is then split by batches, not parts; keep it when resuming")
    p.set_defaults(run=run)


def config_from_args(args) -> BuildConfig:
    if args.chunk_tokens is not None:
        chunk = ChunkConfig(mode="tokens", chunk_tokens=args.chunk_tokens, tokenizer=args.tokenizer)
    else:
        chunk = ChunkConfig(mode="words", max_words=args.chunk_words, min_words=args.min_words,
                            max_tokens=parse_max_tokens(args.max_tokens),
                            prepend_title=args.title_field is not None and not args.no_prepend_title)
    return BuildConfig(
        reader=ReaderConfig(
            text_field=args.text_field,
            id_field=args.id_field,
            title_field=args.title_field or ReaderConfig.title_field,
            domain_field=args.domain_field,
            timestamp_field=args.timestamp_field,
            text_split=args.text_split,
            format=args.format,
            domains=tuple(args.domain),
            on_error=args.on_error,
        ),
        chunk=chunk,
        encoder=EncoderConfig(
            model=args.encoder,
            normalize=not args.no_normalize,
            max_seq_length=args.max_seq_length,
            device=args.device,
            backend=args.encoder_backend,
        ),
        batch_size=args.batch_size,
        shard_size=args.shard_size,
    )


def run(args) -> int:
    from ..datastore import build_datastore

    ray = ray_config(args)
    if ray is None:
        ds = build_datastore(args.inputs, args.out, config_from_args(args), overwrite=args.overwrite,
                             show_progress=args.progress, wait=args.wait)
    else:
        from ..distributed.build import ray_build

        if args.overwrite:
            raise ConfigError("--overwrite is not supported with --ray; remove --out first")
        ds = ray_build(args.inputs, args.out, config_from_args(args), ray_config=ray, parts=args.parts,
                       encode_actors=args.encode_actors, gpus_per_actor=args.gpus_per_actor,
                       threads_per_actor=args.threads_per_actor, show_progress=args.progress)
    info = ds.info()
    c, read = info["counts"], ds.manifest["build"]["read"]
    line = (f"built {ds.root}: {c['documents']:,} documents, {c['passages']:,} passages, {c['words']:,} words"
            + (f", {c['tokens']:,} tokens" if c["tokens"] else "")
            + f"; {info['bytes_per_passage_beyond_text']:.1f} bytes/passage beyond text")
    if read["skipped_total"]:
        line += f"; skipped {read['skipped_total']} ({', '.join(f'{k}: {v}' for k, v in read['skipped'].items())})"
    if read.get("non_finite_nulled"):
        line += f"; {read['non_finite_nulled']} NaN/inf value(s) read as null"
    print(line)
    return 0
