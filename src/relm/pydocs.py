"""Python's own documentation as a corpus: the `pydoc_data` topics and stdlib module docstrings.

This module imports nothing but the standard library and runs as a script (`python -I -S pydocs.py`
prints one JSON document per line), because what it reads depends on the interpreter's state, not
only on its version: an imported library can replace a stdlib function (torch swaps in its own
`inspect.getfile`, which then no longer counts as part of `inspect`), a signature default can be live
state (`logging.shutdown(handlerList=[...])` lists every handler created so far), and a repr carries a
memory address that changes in every process. `relm quickstart` therefore reads the corpus from a
fresh isolated interpreter (`python_docs_records` in `relm.quickstart`), with addresses removed, so
that one Python build gives one corpus, whatever relm, torch or transformers imported before.

What still differs between machines: the Python version (pydoc topics and docstrings change between
releases, patch releases included), the platform (`os`, `socket`, `time`, `subprocess` expose other
functions on Linux, macOS and Windows) and optional modules a build may lack (e.g. `sqlite3`).
"""

from __future__ import annotations

import importlib
import inspect
import json
import re
import sys
from collections.abc import Iterator
from typing import Any

STDLIB_MODULES = (
    "abc argparse array asyncio base64 bisect collections contextlib copy csv dataclasses datetime decimal "
    "enum fnmatch fractions functools glob gzip hashlib heapq inspect io itertools json logging math "
    "operator os pathlib pickle random re shutil socket sqlite3 statistics string struct subprocess "
    "tempfile textwrap threading time typing unittest urllib.parse uuid zipfile"
).split()

# a repr's memory address (`<object object at 0x7f...>`, a sentinel default in a signature) differs in
# every process (address-space randomization); one in the held-out text changes its token count and so
# moves every later eval window of its stream
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def python_docs_corpus() -> Iterator[dict[str, Any]]:
    """Documents from this interpreter's documentation: pydoc topics, then stdlib module docstrings
    (sorted names throughout)."""
    from pydoc_data.topics import topics

    for name in sorted(topics):
        text = topics[name].strip()
        if text:
            yield {"id": f"topic/{name}", "title": name, "domain": "pydoc-topics", "text": text}
    for mod_name in STDLIB_MODULES:
        text = module_text(mod_name)
        if text:
            yield {"id": f"module/{mod_name}", "title": mod_name, "domain": "stdlib-docstrings", "text": text}


def without_addresses(text: str) -> str:
    """`text` with the memory addresses of reprs removed (`<function f at 0x7f3a...>` -> `<function f>`)."""
    return _ADDRESS.sub("", text)


def module_text(name: str) -> str | None:
    """A module's docstring followed by each public class and function with its signature and docstring."""
    try:
        mod = importlib.import_module(name)
    except ImportError:
        return None
    parts = [f"Module {name}\n\n{inspect.getdoc(mod) or ''}".strip()]
    for attr in sorted(getattr(mod, "__all__", None) or dir(mod)):
        if attr.startswith("_"):
            continue
        obj = getattr(mod, attr, None)
        if not (inspect.isclass(obj) or inspect.isfunction(obj) or inspect.isbuiltin(obj)):
            continue
        if getattr(obj, "__module__", name) not in (name, f"_{name}", None) and not name.startswith("os"):
            continue
        doc = inspect.getdoc(obj)
        if not doc:
            continue
        try:
            sig = str(inspect.signature(obj))
        except (TypeError, ValueError):
            sig = ""
        kind = "class" if inspect.isclass(obj) else "function"
        parts.append(f"{name}.{attr}{without_addresses(sig)} ({kind})\n{doc}")
    return "\n\n".join(parts) if len(parts) > 1 or len(parts[0]) > 200 else None




def main() -> int:
    for record in python_docs_corpus():
        sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
