"""The recipes of docs/architecture.md as importable modules: each ```python block whose first line is
``# recipe: NAME`` runs in a module of its own (registered in ``sys.modules``, so that what it defines pickles),
with ``__name__`` set to that module, so its ``if __name__ == "__main__":`` demonstration does not run."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

PAGE = Path(__file__).resolve().parent.parent / "docs" / "architecture.md"


def recipe(name: str) -> str:
    """The source of the recipe block ``# recipe: name`` (exactly one on the page).

    :raises AssertionError: when the page has no such block, or more than one.
    """
    blocks = re.findall(r"^```python\n(.*?)^```", PAGE.read_text(encoding="utf-8"), re.S | re.M)
    found = [block for block in blocks if block.startswith(f"# recipe: {name}\n")]
    assert len(found) == 1, f"docs/architecture.md: expected one ```python block starting `# recipe: {name}`, found {len(found)}"
    return found[0]


def load_recipe(name: str) -> types.ModuleType:
    """The recipe run as module ``architecture_recipe_<name>`` (once per process; its registrations happen then)."""
    module_name = "architecture_recipe_" + re.sub(r"\W", "_", name)
    if module_name not in sys.modules:
        module = types.ModuleType(module_name)
        module.__file__ = str(PAGE)
        sys.modules[module_name] = module
        try:
            exec(compile(recipe(name), f"docs/architecture.md ({name})", "exec"), module.__dict__)
        except BaseException:
            del sys.modules[module_name]
            raise
    return sys.modules[module_name]
