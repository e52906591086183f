"""RETRO checkpoints are one unit swapped in atomically; a damaged run is one clear error line; a SIGKILL
before any filesystem write of `relm retro train` leaves a run that resumes to the same final checkpoint.

Layout (relm.retro.train.write_checkpoint): OUT/checkpoints/step-NNNNNNN/{model.safetensors,
optimizer.safetensors, state.json}, committed by os.replace of OUT/checkpoint.json (which names the step
directory and each file's size and sha256), plus OUT/state.json, a copy of the live state.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from relm.cli import main
from relm.retro.runs import load_run
from relm.retro.train import CHECKPOINT, read_checkpoint
from test_retro_neighbours import VOCAB, BowEncoder, _build

from conftest import write_jsonl

torch.set_num_threads(1)

TINY = ["--d-model", "32", "--layers", "2", "--heads", "2", "--d-ff", "64", "--cca-layers", "2", "--enc-layers", "1",
        "--batch-size", "2", "--seq-chunks", "4", "--warmup", "1", "--threads", "1", "--no-progress"]


def texts(n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    phrases = [" ".join(rng.choice(VOCAB, size=4)) for _ in range(5)]
    return [{"id": f"s{seed}-{i}", "text": " ".join(phrases[(i + j) % 5] for j in range(8))} for i in range(n)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, word_tokenizer_dir):
    """A tiny token datastore with its training and eval neighbours, and a 4-step run trained from it."""
    from relm.datastore.store import Datastore

    tmp = tmp_path_factory.mktemp("retrock")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Datastore, "encoder", lambda self: BowEncoder())
        ds = _build(tmp, texts(20, 0), word_tokenizer_dir, BowEncoder())
        evalf = write_jsonl(tmp / "heldout.jsonl", texts(4, 1))
        root = str(ds.root)
        assert main(["retro", "neighbours", root, "--out", str(tmp / "nb")]) == 0
        assert main(["retro", "neighbours", root, "--eval", str(evalf), "--out", str(tmp / "nb-eval")]) == 0
        assert main(["retro", "train", root, "--neighbours", str(tmp / "nb"), "--out", str(tmp / "run"),
                     "--steps", "4", "--checkpoint-every", "2", *TINY]) == 0
    return ds, evalf, tmp


def train_argv(setup, out: Path, steps: int = 4, every: int = 2) -> list[str]:
    ds, _, tmp = setup
    return ["retro", "train", str(ds.root), "--neighbours", str(tmp / "nb"), "--out", str(out), "--steps", str(steps),
            "--checkpoint-every", str(every), *TINY]


def test_checkpoint_is_one_unit_named_by_checkpoint_json(setup):
    _, _, tmp = setup
    run = tmp / "run"
    pointer = json.loads((run / CHECKPOINT).read_text())
    assert pointer["step"] == 4 and pointer["dir"] == "checkpoints/step-0000004"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-0000004"]  # step 2 was removed
    assert sorted(p.name for p in run.iterdir()) == [CHECKPOINT, "checkpoints", "state.json"]
    live = run / pointer["dir"]
    for name, entry in pointer["files"].items():
        assert (live / name).stat().st_size == entry["size"]
    assert (run / "state.json").read_bytes() == (live / "state.json").read_bytes()  # the copy for people
    ck = read_checkpoint(run)
    assert ck.dir == live and ck.state["step"] == 4
    model, state = load_run(run)
    assert state["step"] == 4 and not model.training


def test_resume_ignores_and_removes_stray_step_directories(setup, tmp_path):
    _, _, tmp = setup
    run = tmp_path / "run"
    assert main(train_argv(setup, run, steps=4, every=2)) == 0
    want = {n: (run / "checkpoints/step-0000004" / n).read_bytes() for n in ("model.safetensors", "state.json")}
    # a save interrupted before its commit: a newer, half-written step directory that nothing names
    stray = run / "checkpoints" / "step-0000006"
    stray.mkdir()
    (stray / "model.safetensors.tmp").write_bytes(b"half")
    (run / "checkpoint.json.tmp").write_text("{")
    ck = read_checkpoint(run)
    assert ck.state["step"] == 4 and ck.tensors("model.safetensors")  # readers see only what is named
    model, state = load_run(run)
    assert state["step"] == 4 and stray.exists()  # load_run never writes
    assert main(train_argv(setup, run, steps=4, every=2)) == 0  # resumes at 4: nothing left to train
    assert not stray.exists() and not (run / "checkpoint.json.tmp").exists()
    assert {n: (run / "checkpoints/step-0000004" / n).read_bytes() for n in want} == want


def test_flat_layout_of_earlier_versions_loads_and_resumes_exactly(setup, tmp_path, monkeypatch):
    """A run in the flat layout (state.json beside model.safetensors) still loads, and resuming it continues
    the same run and moves it to the new layout."""
    straight, half = tmp_path / "straight", tmp_path / "half"
    assert main(train_argv(setup, straight, steps=4, every=4)) == 0
    # `half` in the flat layout at step 2: train 2 of the 4 steps (the same schedule), then flatten it
    from relm.retro.train import Trainer

    with monkeypatch.context() as m:  # stop at step 2 as an interruption would
        orig = Trainer.train
        m.setattr(Trainer, "train", lambda self, **kw: orig(self, **{**kw, "until": 2}))
        assert main(train_argv(setup, half, steps=4, every=4)) == 0
    _flatten(half)
    assert sorted(p.name for p in half.iterdir()) == ["model.safetensors", "optimizer.safetensors", "state.json"]
    _, state = load_run(half)
    assert state["step"] == 2
    assert main(train_argv(setup, half, steps=4, every=4)) == 0
    assert sorted(p.name for p in half.iterdir()) == [CHECKPOINT, "checkpoints", "state.json"]
    for name in ("model.safetensors", "optimizer.safetensors"):
        assert (half / "checkpoints/step-0000004" / name).read_bytes() == \
            (straight / "checkpoints/step-0000004" / name).read_bytes(), name


# -- damaged runs: one line naming the file ------------------------------------------------------------------

def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _garble(path: Path) -> None:  # same size, other bytes
    path.write_bytes(bytes(255 - b for b in path.read_bytes()))


LIVE = "checkpoints/step-0000004"
DAMAGE = [  # (name, file to damage relative to the run, damage, expected words in the message)
    ("model truncated", f"{LIVE}/model.safetensors", _truncate, "truncated"),
    ("model garbled", f"{LIVE}/model.safetensors", _garble, "sha256 differs"),
    ("model missing", f"{LIVE}/model.safetensors", Path.unlink, "missing"),
    ("optimizer truncated", f"{LIVE}/optimizer.safetensors", _truncate, "truncated"),
    ("state truncated", f"{LIVE}/state.json", _truncate, "truncated"),
    ("state garbled", f"{LIVE}/state.json", _garble, "sha256 differs"),
    ("pointer truncated", CHECKPOINT, _truncate, "truncated or not JSON"),
    ("pointer garbage", CHECKPOINT, lambda p: p.write_bytes(b"\x00\xffnot json"), "truncated or not JSON"),
    ("pointer not an object", CHECKPOINT, lambda p: p.write_text("[1, 2]"), "not a JSON object"),
    ("pointer without files", CHECKPOINT, lambda p: p.write_text(json.dumps(
        {**json.loads(p.read_text()), "files": {}})), "'files' does not list"),
    ("pointer escaping the run", CHECKPOINT, lambda p: p.write_text(json.dumps(
        {**json.loads(p.read_text()), "dir": "../elsewhere"})), "not checkpoints/step-NNNNNNN"),
    ("pointer missing", CHECKPOINT, Path.unlink, "missing"),
]
FLAT_DAMAGE = [  # the flat layout of earlier versions: no sizes or hashes to compare
    ("flat model truncated", "model.safetensors", _truncate, "truncated or not a safetensors file"),
    ("flat model garbage", "model.safetensors", lambda p: p.write_bytes(b"garbage" * 9), "not a safetensors file"),
    ("flat model missing", "model.safetensors", Path.unlink, "missing"),
    ("flat state truncated", "state.json", _truncate, "truncated or not JSON"),
    ("flat state not an object", "state.json", lambda p: p.write_text('"step"'), "not a JSON object"),
    ("flat state without step", "state.json", lambda p: p.write_text("{}"), "'step' is missing"),
]


def _flatten(run: Path) -> None:
    live = run / json.loads((run / CHECKPOINT).read_text())["dir"]
    for name in ("model.safetensors", "optimizer.safetensors", "state.json"):
        (run / name).unlink(missing_ok=True)
        shutil.move(live / name, run / name)
    shutil.rmtree(run / "checkpoints")
    (run / CHECKPOINT).unlink()


@pytest.mark.parametrize("name,rel,damage,words", DAMAGE + FLAT_DAMAGE, ids=[d[0] for d in DAMAGE + FLAT_DAMAGE])
def test_damaged_run_is_one_error_line(setup, tmp_path, capsys, monkeypatch, name, rel, damage, words):
    from relm.datastore.store import Datastore

    monkeypatch.setattr(Datastore, "encoder", lambda self: BowEncoder())
    ds, evalf, tmp = setup
    run = tmp_path / "run"
    shutil.copytree(tmp / "run", run)
    if name.startswith("flat"):
        _flatten(run)
    damage(run / rel)
    commands = {
        "eval": ["retro", "eval", str(run), "--datastore", str(ds.root), "--eval", str(evalf), "--neighbours",
                 str(tmp / "nb-eval"), "--window", "16", "--stride", "8", "--out", str(tmp_path / "ev")],
        "generate": ["retro", "generate", str(run), "whale ship", "--datastore", str(ds.root),
                     "--max-new-tokens", "2"],
        "train": train_argv(setup, run, steps=6),
    }
    if "optimizer" in name:  # only resuming reads the optimizer state; eval and generate need only its size
        commands = {k: v for k, v in commands.items() if k == "train"}
    capsys.readouterr()
    for command, argv in commands.items():
        assert main(argv) == 2, command
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith("relm retro: error: "), (command, err)
        assert words in err and "Traceback" not in err, (command, err)
        if name != "pointer missing":  # (that one names the checkpoint.json that is missing)
            assert str(run / rel) in err, (command, err)
        assert "damaged" in err, (command, err)


def test_not_a_run(setup, tmp_path, capsys):
    ds, _, _ = setup
    assert main(["retro", "generate", str(tmp_path / "nope"), "x", "--datastore", str(ds.root)]) == 2
    assert "not a RETRO run (no such directory)" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["retro", "generate", str(tmp_path / "empty"), "x", "--datastore", str(ds.root)]) == 2
    assert f"not a RETRO run (no {CHECKPOINT})" in capsys.readouterr().err


# -- crash injection: SIGKILL before the N-th filesystem write of `relm retro train` ---------------------------
# Steps 6, a checkpoint every 3: two saves, about 29 writes in the run directory (mkdirs, each file's
# .tmp and rename, the checkpoint.json commit, the state.json copy, removing step 3). After each kill the run
# must read as the previous checkpoint or the new one (never damaged, never a step with other weights), and
# the same command run again must end at the uninterrupted run's checkpoint, bit for bit.

STEPS, EVERY = 6, 3


def _final(run: Path) -> dict:
    """The live checkpoint's tensor files (bytes) and its state without the wall-clock field."""
    ck = read_checkpoint(run)
    state = dict(ck.state)
    state["history"] = [{k: v for k, v in h.items() if k != "tokens_per_s"} for h in state["history"]]
    return {"state": state, **{n: ck.read_bytes(n) for n in ("model.safetensors", "optimizer.safetensors")}}


def _crash_sweep(setup, tmp_path, fractions: tuple[float, ...] | None) -> tuple[int, list[int], dict[int, bytes]]:
    """Kill before each write N = round(f · writes) for f in fractions (every N when None), rerun, compare."""
    from crashkit import run_cli

    ref_out = tmp_path / "ref"
    ref = run_cli(train_argv(setup, ref_out, STEPS, EVERY), root=ref_out)
    assert ref.rc == 0 and not ref.killed, ref.stderr
    want = _final(ref_out)
    assert want["state"]["step"] == STEPS
    seen: dict[int, bytes] = {}  # step of a checkpoint a kill left -> its weights
    points = list(range(1, ref.writes + 1)) if fractions is None else \
        sorted({max(1, min(ref.writes, round(f * ref.writes))) for f in fractions})
    for n in points:
        out = tmp_path / f"kill{n}"
        argv = train_argv(setup, out, STEPS, EVERY)
        killed = run_cli(argv, root=out, kill_at=n)
        assert killed.killed, (n, killed.rc, killed.stderr)
        ck = read_checkpoint(out)  # never damaged: nothing, the previous checkpoint or the new one
        if ck is not None:
            step = ck.state["step"]
            assert step in (EVERY, STEPS), f"kill before write {n}: checkpoint at step {step}"
            model = ck.read_bytes("model.safetensors")
            assert seen.setdefault(step, model) == model, \
                f"kill before write {n}: the checkpoint of step {step} holds other weights than another kill left"
        again = run_cli(argv, root=out)
        assert again.rc == 0 and not again.killed, (n, again.stderr)
        got = _final(out)
        assert got["state"] == want["state"], f"kill before write {n}: the resumed run's state differs"
        for name in ("model.safetensors", "optimizer.safetensors"):
            assert got[name] == want[name], f"kill before write {n}: {name} differs from the uninterrupted run"
        assert sorted(p.name for p in out.iterdir()) == [CHECKPOINT, "checkpoints", "state.json"], n
        assert [p.name for p in (out / "checkpoints").iterdir()] == [f"step-{STEPS:07d}"], n
    if ck := read_checkpoint(ref_out):  # the uninterrupted run's final weights are the step-6 ones kills left
        assert seen.get(STEPS, ck.read_bytes("model.safetensors")) == ck.read_bytes("model.safetensors")
    return ref.writes, points, seen


def test_kill_during_train_resumes_to_the_same_checkpoint(setup, tmp_path):
    """Four kill points: with this layout of 29 writes, in the first save before its commit (no checkpoint
    left), just after its commit, at the second commit's rename (step 3 left, a complete step-6 directory
    that nothing names) and while removing step 3 (step 6 left)."""
    writes, points, seen = _crash_sweep(setup, tmp_path, (0.3, 0.45, 0.8, 0.93))
    assert writes >= 20 and len(points) == 4
    assert set(seen) == {EVERY, STEPS} or writes != 29  # (the comment above holds for 29 writes)


@pytest.mark.slow
def test_kill_before_every_write_of_train(setup, tmp_path):
    writes, points, seen = _crash_sweep(setup, tmp_path, None)
    assert points == list(range(1, writes + 1)) and set(seen) == {EVERY, STEPS}
