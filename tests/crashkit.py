"""Crash injection for relm commands: SIGKILL a command just before its N-th filesystem write.

A command runs as `relm.cli.main(argv)` in a child process forked from a multiprocessing forkserver
(which imports relm once and never runs faiss's OpenMP, so forked children are safe and start in
milliseconds). In the child an audit hook (`sys.addaudithook`) sees every filesystem write that Python
makes inside `root` — opening a file for writing, rename/replace, unlink, rmdir, mkdir, copyfile — and
kills the process with SIGKILL just before the N-th one. Writes made inside C libraries (faiss's
`write_index`) are not seen one by one, but the renames that publish them are.

    run = run_cli(["add", str(ds), str(new)], root=tmp_path)            # rc, writes, stdout, stderr
    run = run_cli([...], root=tmp_path, kill_at=7)                      # run.killed is True
    tree_digest(ds)                                                     # {relpath: sha256}, timings dropped

The children use the deterministic `HashEncoder` of conftest in place of the real encoder.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import re
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

_WRITE_EVENTS = {"os.rename", "os.remove", "os.rmdir", "os.mkdir", "os.truncate", "shutil.copyfile", "os.link",
                 "os.symlink"}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_CTX = None

# keys whose values are wall-clock measurements, not content: dropped before files are compared
TIMING_KEYS = re.compile(r"^(.*seconds|.*_per_s|peak_rss_mb|resumed_shards|encoded_passages|throughput)$")


@dataclass
class Run:
    rc: int | None  # exit code of main(argv); None when killed
    killed: bool
    writes: int  # writes inside root seen before the end (or the kill)
    stdout: str
    stderr: str


def _context():
    global _CTX
    if _CTX is None:
        _CTX = mp.get_context("forkserver")
        _CTX.set_forkserver_preload(["crashkit", "conftest", "relm.cli", "relm.datastore", "relm.retrieval.ann",
                                     "relm.retrieval.bm25", "relm.retrieval.sharding", "relm.retrieval.retriever",
                                     # torch: imported once here instead of in every RETRO child (1.7 s each)
                                     "torch", "safetensors.torch", "relm.retro.train", "relm.retro.runs"])
    return _CTX


def _path_of(args, event: str) -> str | None:
    if not args:
        return None
    path = args[0]
    dir_fd = None
    if event in ("os.remove", "os.rmdir", "os.mkdir") and len(args) >= 2:
        dir_fd = args[-1]
    if isinstance(path, int):
        return None
    path = os.fsdecode(path)
    if isinstance(dir_fd, int) and dir_fd >= 0 and not os.path.isabs(path):
        try:
            path = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), path)
        except OSError:
            return None
    return os.path.abspath(path)


def _child(argv: list[str], root: str, kill_at: int | None, out: str) -> None:
    import io

    import relm.encoders

    import conftest

    relm.encoders.load_encoder = lambda config=None, **kw: conftest.HashEncoder()
    try:
        import faiss

        faiss.omp_set_num_threads(1)
    except ImportError:
        pass
    state = {"writes": 0, "on": True}
    root = os.path.abspath(root) + os.sep

    def hook(event, args):
        if not state["on"]:
            return
        if event == "open":
            mode, flags = (args[1], args[2]) if len(args) >= 3 else (None, 0)
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & _WRITE_FLAGS)
            if not writing:
                return
        elif event not in _WRITE_EVENTS:
            return
        path = _path_of(args, event)
        if path is None or not (path + os.sep).startswith(root):
            return
        state["writes"] += 1
        if kill_at is not None and state["writes"] >= kill_at:
            state["on"] = False
            _report(out, None, True, state["writes"], stdout, stderr)
            os.kill(os.getpid(), signal.SIGKILL)

    stdout, stderr = io.StringIO(), io.StringIO()
    sys.stdout, sys.stderr = stdout, stderr
    sys.addaudithook(hook)
    from relm.cli import main

    try:
        rc = main(argv)
    except SystemExit as e:  # argparse
        rc = e.code if isinstance(e.code, int) else 2
    except BaseException as e:  # a traceback: report it as such
        import traceback

        traceback.print_exc(file=stderr)
        rc = f"traceback: {type(e).__name__}: {e}"
    state["on"] = False
    _report(out, rc, False, state["writes"], stdout, stderr)
    os._exit(0)


def _report(out: str, rc, killed: bool, writes: int, stdout, stderr) -> None:
    with open(out, "w") as f:
        json.dump({"rc": rc, "killed": killed, "writes": writes, "stdout": stdout.getvalue(),
                   "stderr": stderr.getvalue()}, f)


def run_cli(argv: list[str], *, root: str | Path, kill_at: int | None = None, timeout: float = 120) -> Run:
    """Run `relm ARGV` in a forked child; with kill_at=N it is SIGKILLed before its N-th write in root."""
    ctx = _context()
    out = Path(root).parent / f".crashkit-{os.getpid()}-{id(argv)}.json"
    out.unlink(missing_ok=True)
    p = ctx.Process(target=_child, args=([str(a) for a in argv], str(root), kill_at, str(out)))
    p.start()
    p.join(timeout)
    if p.is_alive():
        p.kill()
        p.join()
        raise TimeoutError(f"relm {' '.join(map(str, argv))} did not finish in {timeout} s")
    data = json.loads(out.read_text())
    out.unlink()
    killed = p.exitcode == -signal.SIGKILL
    assert killed == data["killed"], (p.exitcode, data)
    if isinstance(data["rc"], str):
        raise AssertionError(f"relm {' '.join(map(str, argv))} raised a traceback:\n{data['stderr']}")
    return Run(rc=data["rc"], killed=killed, writes=data["writes"], stdout=data["stdout"], stderr=data["stderr"])


def _normalise(obj):
    if isinstance(obj, dict):
        return {k: _normalise(v) for k, v in obj.items() if not TIMING_KEYS.match(k)}
    if isinstance(obj, list):
        return [_normalise(v) for v in obj]
    return obj


def tree_digest(root: str | Path, ignore: tuple[str, ...] = (".lock",)) -> dict[str, str]:
    """{relative path: sha256} of every file under root; JSON files hashed with timing fields dropped."""
    root = Path(root)
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_dir() or rel in ignore:
            continue
        data = p.read_bytes()
        if p.suffix == ".json":
            try:
                data = json.dumps(_normalise(json.loads(data)), sort_keys=True).encode()
            except ValueError:
                pass
        out[rel] = hashlib.sha256(data).hexdigest()[:16]
    return out


def kill_points(total: int, sample: int | None) -> list[int]:
    """1..total, or `sample` of them spread evenly (first and last included)."""
    if sample is None or sample >= total:
        return list(range(1, total + 1))
    step = (total - 1) / (sample - 1)
    return sorted({1 + round(i * step) for i in range(sample)})
