"""Write a benchmark's table into benchmarks/README.md between its markers (shared by every benchmark)."""

from __future__ import annotations

from pathlib import Path

README = Path(__file__).resolve().parent / "README.md"


def write_readme_table(name: str, text: str, readme: Path = README) -> None:
    """Replace the block between `<!-- NAME:start -->` and `<!-- NAME:end -->` (appended when missing)."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    body = readme.read_text() if readme.exists() else "# Benchmarks\n"
    block = f"{start}\n{text}\n{end}"
    if start in body:
        body = body[: body.index(start)] + block + body[body.index(end) + len(end) :]
    else:
        body += "\n" + block + "\n"
    readme.write_text(body)
