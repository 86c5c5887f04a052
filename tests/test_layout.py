"""The package's layering (issue 24): the methods are a library that imports none of the
course; the course's run-time plumbing (``course/``) imports none of the studies or the
tooling; the studies (``studies/``) import none of the tooling; ``data`` imports no model code.
Read from the source (every import statement, also inside functions), so a lazy import cannot
hide a dependency."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "safealign_lib"
LIBRARY = ("config", "pool", "worklog", "data", "models", "adapters", "evaluation", "interp")
LIBRARY += ("methods",)
# what each part may not import
FORBIDDEN = {
    **{part: ("course", "studies", "tooling") for part in LIBRARY},
    "course": ("studies", "tooling"),
    "studies": ("tooling",),
    "data": ("course", "studies", "tooling", "models", "adapters", "evaluation", "methods"),
}


def _part(path: Path, root: Path) -> str:
    """``methods`` for safealign_lib/methods/salora/layer.py, ``pool`` for pool.py."""
    return path.relative_to(root).parts[0].removesuffix(".py")


def _imports(path: Path) -> set[str]:
    """The ``safealign_lib`` subpackages a module imports (first component after the root)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "safealign_lib" and len(parts) > 1:
                out.add(parts[1])
    return out


def _violations(root: Path) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        part = _part(path, root)
        bad = _imports(path) & set(FORBIDDEN.get(part, ()))
        found += [f"{path.relative_to(root.parent)} imports safealign_lib.{b}" for b in bad]
    return found


def test_every_part_imports_only_the_layers_above_it():
    assert _violations(PKG) == []


def test_the_rule_sees_a_forbidden_import(tmp_path):
    """The check can fail: a method importing a study is reported (also from a function)."""
    fake = tmp_path / "safealign_lib"
    (fake / "methods").mkdir(parents=True)
    (fake / "methods" / "m.py").write_text(
        "def f():\n    from safealign_lib.studies import conditions\n"
    )
    (fake / "data").mkdir()
    (fake / "data" / "d.py").write_text("from safealign_lib.models.chat import collate\n")
    assert sorted(_violations(fake)) == [
        "safealign_lib/data/d.py imports safealign_lib.models",
        "safealign_lib/methods/m.py imports safealign_lib.studies",
    ]


@pytest.mark.parametrize("folder", ["course", "studies", "tooling"])
def test_each_course_layer_is_a_package_with_a_docstring(folder):
    init = PKG / folder / "__init__.py"
    assert ast.get_docstring(ast.parse(init.read_text())), f"{init} says what the layer holds"


def test_no_notebook_harness_left_in_the_methods_or_interp():
    """Per-notebook harnesses live in studies/: no module of methods/ or interp/ calls itself a
    notebook's harness or reads the course's profiles."""
    for folder in ("methods", "interp"):
        for path in (PKG / folder).rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            assert "Profile" not in text and "harness" not in text.lower(), path
