"""No import cycles: every relm module imports on its own, first, in a fresh module table."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import relm

CHECK = """
import importlib, sys
failed = []
for name in sys.argv[1:]:
    for mod in [m for m in sys.modules if m == "relm" or m.startswith("relm.")]:
        del sys.modules[mod]
    try:
        importlib.import_module(name)
    except ImportError as e:
        failed.append(f"{name}: {e}")
print("\\n".join(failed))
"""


def test_every_module_imports_first_without_a_cycle():
    names = [m.name for m in pkgutil.walk_packages(relm.__path__, "relm.") if not m.name.endswith("__main__")]
    assert len(names) > 40
    out = subprocess.run([sys.executable, "-c", CHECK, *names], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", out.stdout


def test_opening_a_datastore_does_not_import_faiss_or_torch():
    code = "import sys, relm.datastore; print(sorted(m for m in ('faiss', 'torch', 'bm25s') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
