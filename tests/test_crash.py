"""Crash injection: every writing command killed (SIGKILL) before its N-th filesystem write.

For each command and kill point N, on a fresh copy of the same tiny datastore (always at the same
path, so nothing path-dependent can differ):
  1. the command is killed just before its N-th write;
  2. `relm info` (a reader) runs and must not write anything;
  3. `relm recover` rolls the change back or forward: the tree equals the state before the command
     or the state after an uninterrupted run, never anything else (build: skipped, there is no state before);
  4. the same command is run again and must leave the tree byte-identical to an uninterrupted run
     (timing fields of JSON files aside), and search must give the uninterrupted run's results.
The default run samples the kill points; `-m slow` sweeps every one.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from crashkit import kill_points, run_cli, tree_digest

from conftest import corpus_records, make_text, write_jsonl

BUILD_FLAGS = ["--chunk-words", "16", "--min-words", "4", "--shard-size", "20", "--no-progress"]
SAMPLE = 7


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("crash-corpus")
    new = [{"id": f"new-{i}", "text": make_text(200 + i, 45), "domain": "gamma", "timestamp": 1_700_000_000 + i}
           for i in range(3)]
    return {
        "base": write_jsonl(root / "base.jsonl", corpus_records(n_docs=8, base_words=40)),
        "new": write_jsonl(root / "new.jsonl", new),
    }


def _ok(run, what: str) -> None:
    assert run.rc == 0 and not run.killed, f"{what}: rc {run.rc}\n{run.stdout}\n{run.stderr}"


def _make_base(work: Path, corpus, *, indexes: bool, deleted: bool) -> None:
    ds = work / "ds"
    _ok(run_cli(["build", corpus["base"], "--out", ds, *BUILD_FLAGS], root=work), "build")
    if indexes:
        _ok(run_cli(["index", ds, "--name", "flat", "--factory", "flat"], root=work), "index flat")
        _ok(run_cli(["index", ds, "--name", "bm25", "--bm25"], root=work), "index bm25")
        _ok(run_cli(["index", ds, "--name", "dom", "--shard-by", "domain"], root=work), "index dom")
    if deleted:
        _ok(run_cli(["delete", ds, "--doc-id", "doc-2", "--doc-id", "doc-5"], root=work), "delete")


def _searches(ds: Path, work: Path) -> list[str]:
    out = []
    for extra in ([], ["--retriever", "bm25", "--index", "bm25"]):
        if extra and not (ds / "indexes" / "bm25").exists():
            continue
        run = run_cli(["search", ds, "whale ship harpoon", "-k", "5", "--json", *extra], root=work)
        _ok(run, "search")
        out.append(run.stdout)
    return out


COMMANDS = {
    # name: (argv after the datastore is placed, base has indexes, base has deletions)
    "build": (lambda ds, c: ["build", c["base"], "--out", ds, *BUILD_FLAGS], False, False),
    "add": (lambda ds, c: ["add", ds, c["new"], "--no-progress"], True, False),
    "delete": (lambda ds, c: ["delete", ds, "--doc-id", "doc-1", "--doc-id", "doc-6"], True, False),
    "compact": (lambda ds, c: ["compact", ds], True, True),
    "index-overwrite": (lambda ds, c: ["index", ds, "--name", "flat", "--factory", "hnsw", "--overwrite"],
                        True, False),
}


def sweep(tmp_path: Path, corpus, name: str, sample: int | None) -> int:
    argv_of, indexes, deleted = COMMANDS[name]
    base, work = tmp_path / "base", tmp_path / "work"
    ds = work / "ds"
    if name != "build":
        _make_base(base, corpus, indexes=indexes, deleted=deleted)
    before = tree_digest(base / "ds") if name != "build" else {}
    argv = argv_of(ds, corpus)

    def fresh() -> None:
        shutil.rmtree(work, ignore_errors=True)
        if name == "build":
            work.mkdir()
        else:
            shutil.copytree(base, work)

    fresh()
    ref_run = run_cli(argv, root=work)
    _ok(ref_run, f"uninterrupted {name}")
    after, searched = tree_digest(ds), _searches(ds, work)
    assert after != before
    for n in kill_points(ref_run.writes, sample):
        fresh()
        killed = run_cli(argv, root=work, kill_at=n)
        assert killed.killed, f"{name}: not killed at write {n} of {ref_run.writes}"
        where = f"{name} killed before write {n}/{ref_run.writes}"
        if name != "build":
            state = tree_digest(ds)
            info = run_cli(["info", ds], root=work)
            assert info.rc in (0, 2) and "Traceback" not in info.stderr, (where, info.stderr)
            assert info.writes == 0 and tree_digest(ds) == state, f"{where}: `relm info` wrote"
            _ok(run_cli(["recover", ds], root=work), f"{where}: recover")
            assert tree_digest(ds) in (before, after), f"{where}: recover left neither the old nor the new state"
        rerun = run_cli(argv, root=work)
        assert rerun.rc == 0 or (name == "add" and "already in" in rerun.stderr), (where, rerun.stderr)
        assert tree_digest(ds) == after, f"{where}: the rerun is not byte-identical to an uninterrupted run"
        assert _searches(ds, work) == searched, f"{where}: search results differ"
    return ref_run.writes


@pytest.mark.parametrize("name", list(COMMANDS))
def test_killed_anywhere_then_rerun_is_byte_identical(tmp_path, corpus, name):
    assert sweep(tmp_path, corpus, name, SAMPLE) > SAMPLE


@pytest.mark.slow
@pytest.mark.parametrize("name", list(COMMANDS))
def test_killed_at_every_write_then_rerun_is_byte_identical(tmp_path, corpus, name):
    sweep(tmp_path, corpus, name, None)
