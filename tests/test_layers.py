"""The package's floors hold: no module imports from a floor above its own or sideways across one.

errors ← models ← infer ← compress / tune / eval / rag ← route ← serve ← build ← cli. What two
modules of one floor both need belongs a floor lower; nothing in the library imports the CLI.
Every import counts, the lazy ones inside functions too: they are what keep `kecil --help` fast,
not an exception to the layering.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "kecil"

# top-level name under kecil -> floor; the four middle stages share a floor but not each other.
FLOORS = {
    "__init__": 0, "errors": 0, "paths": 0, "scratch": 0,
    "models": 1,
    "infer": 2,
    "compress": 3, "tune": 3, "eval": 3, "rag": 3,
    "route": 4,
    "serve": 5,
    "build": 6, "demo": 6,
    "cli": 7, "__main__": 7,
}
PEERS = {"compress", "tune", "eval", "rag"}  # stages of one floor that must not lean on each other


def _part(path: Path, root: Path) -> str:
    """The top-level package or module a file belongs to: kecil/infer/load.py -> infer."""
    return path.relative_to(root).parts[0].removesuffix(".py")


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, top-level kecil part) of every `kecil.X` import in a file, lazy ones included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "kecil" and len(parts) > 1:
                found.append((node.lineno, parts[1]))
    return found


def layering_violations(root: Path = PACKAGE) -> list[str]:
    problems = []
    for path in sorted(root.rglob("*.py")):
        own = _part(path, root)
        if own not in FLOORS:
            problems.append(f"{path.relative_to(root.parent)}: kecil.{own} has no floor in tests/test_layers.py: add it")
            continue
        for line, target in _imports(path):
            if target == own:
                continue
            if target not in FLOORS:
                problems.append(f"{path.relative_to(root.parent)}:{line} imports kecil.{target}, which has no floor")
            elif FLOORS[target] > FLOORS[own]:
                problems.append(f"{path.relative_to(root.parent)}:{line} imports kecil.{target} from a floor above kecil.{own}")
            elif target in PEERS and own in PEERS:
                problems.append(f"{path.relative_to(root.parent)}:{line} imports kecil.{target} sideways from kecil.{own}")
    return problems


def test_no_module_imports_from_a_floor_above_or_beside_its_own():
    assert layering_violations() == []


@pytest.mark.parametrize(("importer", "imported", "allowed"), [
    ("infer/engine.py", "kecil.serve.reply", False),  # up
    ("rag/ask.py", "kecil.eval.run", False),  # sideways
    ("serve/app.py", "kecil.cli", False),  # nothing imports the CLI
    ("serve/app.py", "kecil.infer.engine", True),  # down
])
def test_the_check_catches_what_it_is_for(tmp_path, importer, imported, allowed):
    # A copy of the rule on a tree of one file, so a broken walker cannot pass the real test by finding nothing.
    file = tmp_path / "kecil" / importer
    file.parent.mkdir(parents=True)
    file.write_text(f"def lazy():\n    from {imported} import something\n", encoding="utf-8")
    assert (layering_violations(tmp_path / "kecil") == []) == allowed
