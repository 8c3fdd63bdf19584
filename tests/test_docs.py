"""Every ```python block of README.md and of every page in docs/ runs as pasted, each in its own temporary folder.

What runs is the block as it stands on the page, with one visible exception: training budgets are capped by the
table BUDGETS below, so that the whole file runs in well under a minute on two cores. A budget is only ever made
smaller; the environment, the agents, the times, the backend and every other argument are left as they are.
A block that is not meant to run (shell commands, program output) must not be marked ```python.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = ["README.md", *sorted(f"docs/{path.name}" for path in (ROOT / "docs").glob("*.md"))]

# The only rewriting done before a block runs: each match's number `n` becomes min(n, cap).
#   (pattern whose group "n" is the budget, cap, example)
BUDGETS = [
    (r"\.learn\((?P<n>\d[\d_]*)", 1_000, "model.learn(1_000_000, progress_bar=True) -> model.learn(1000, progress_bar=True)"),
    (r'"-n", "(?P<n>\d+)"', 500, 'sb3_nigt.zoo.main([..., "-n", "20000", ...]) -> [..., "-n", "500", ...]'),
]

# A block that starts worker processes must guard its entry point, as SB3's SubprocVecEnv requires.
STARTS_WORKERS = re.compile(r"""backend\s*=\s*["']subprocess["']|make_backend\(\s*["']subprocess["']""")
GUARD = 'if __name__ == "__main__":'


def python_blocks(page: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", (ROOT / page).read_text(), re.S | re.M)


def with_small_budget(code: str) -> str:
    """``code`` with every budget of BUDGETS capped."""
    for pattern, cap, _ in BUDGETS:
        def cap_budget(match: re.Match, cap: int = cap) -> str:
            budget = int(match.group("n").replace("_", ""))
            if budget <= cap:
                return match.group(0)
            start, end = match.start("n") - match.start(), match.end("n") - match.start()
            return match.group(0)[:start] + str(cap) + match.group(0)[end:]

        code = re.sub(pattern, cap_budget, code)
    return code


BLOCKS = [(page, index) for page in PAGES for index, _ in enumerate(python_blocks(page))]


def test_budget_rewriting_only_changes_budgets():
    code = 'model.learn(1_000_000, progress_bar=True)\nmodel.learn(30)\nmain(["train", "-n", "20000", "-f", "logs/"])\n'
    assert with_small_budget(code) == 'model.learn(1000, progress_bar=True)\nmodel.learn(30)\nmain(["train", "-n", "500", "-f", "logs/"])\n'


def test_the_pages_that_show_code_are_collected():
    pages = {page for page, _ in BLOCKS}
    for page in ("README.md", "docs/rennala_nigt.md", "docs/malenia_nigt.md", "docs/synchronized_nigt.md",
                 "docs/afedpg.md", "docs/time.md", "docs/algorithms.md", "docs/backends.md", "docs/zoo.md",
                 "docs/policy.md", "docs/reproduction.md", "docs/calibration.md"):
        assert page in pages, f"{page} has no ```python block"


@pytest.mark.parametrize(("page", "index"), BLOCKS, ids=[f"{page}[{index}]" for page, index in BLOCKS])
def test_python_block_runs_as_pasted(page, index, tmp_path, monkeypatch):
    block = python_blocks(page)[index]
    if STARTS_WORKERS.search(block):
        assert GUARD in block, f"{page}, block {index}: starts worker processes without `{GUARD}`"
    monkeypatch.chdir(tmp_path)
    exec(compile(with_small_budget(block), f"{page}[{index}]", "exec"), {"__name__": "__main__"})
