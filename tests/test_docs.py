"""Every Python block of the pages that document the clock runs as pasted (in a temporary folder)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
PAGES = ["time.md", "algorithms.md", "backends.md"]


def python_blocks(page: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(), re.S)


@pytest.mark.parametrize("page", PAGES)
def test_python_blocks_run_as_pasted(page, tmp_path, monkeypatch):
    blocks = python_blocks(page)
    assert blocks, f"{page} has no Python block"
    monkeypatch.chdir(tmp_path)
    for block in blocks:
        exec(compile(block, f"{page}", "exec"), {"__name__": "__main__"})
