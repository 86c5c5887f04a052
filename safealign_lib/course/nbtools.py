"""Notebook hygiene: strip outputs, and check the course's notebook shape.

``python -m safealign_lib.course.nbtools strip FILE...`` strips outputs in place;
``python -m safealign_lib.course.nbtools check FILE...`` exits non-zero on a shape problem.
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path


def strip(path: str | Path) -> bool:
    """Remove outputs and execution counts; True when the file changed."""
    p = Path(path)
    nb = json.loads(p.read_text())
    before = json.dumps(nb, sort_keys=True)
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code":
            cell["outputs"], cell["execution_count"] = [], None
        cell.get("metadata", {}).pop("execution", None)
        cell.get("metadata", {}).pop("papermill", None)
    nb.get("metadata", {}).pop("papermill", None)
    changed = json.dumps(nb, sort_keys=True) != before
    if changed:
        p.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    return changed


def shape_problems(path: str | Path) -> list[str]:
    """What breaks the course's notebook conventions (empty list: none)."""
    nb = json.loads(Path(path).read_text())
    cells = nb.get("cells", [])
    code = [c for c in cells if c.get("cell_type") == "code"]
    problems = []
    if any(c.get("outputs") or c.get("execution_count") for c in code):
        problems.append("committed with outputs (run `make strip`)")
    params = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(params) != 1:
        problems.append(f"{len(params)} cells tagged 'parameters' (need exactly one)")
    else:
        src = "".join(params[0]["source"])
        for node in ast.parse(src).body:
            if not (isinstance(node, ast.Assign) and _is_literal(node.value)):
                problems.append(
                    f"parameters cell has a non-literal statement: {ast.unparse(node)[:60]}"
                )
    if nb.get("metadata", {}).get("kernelspec", {}).get("name", "python3") != "python3":
        problems.append("kernelspec is not python3")
    if (
        not cells
        or cells[0].get("cell_type") != "markdown"
        or not "".join(cells[0]["source"]).startswith("# ")
    ):
        problems.append("first cell is not a markdown title")
    text = " ".join("".join(c["source"]) for c in cells if c.get("cell_type") == "markdown").lower()
    for need in ("learning objectives", "summary", "exercise"):
        if need not in text:
            problems.append(f"no '{need}' section")
    if not code or "metrics_io.record(" not in "".join(code[-1]["source"]):
        problems.append("last code cell does not record metrics")
    return problems


def _is_literal(node: ast.AST) -> bool:
    try:
        ast.literal_eval(node)
        return True
    except ValueError:
        return False


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 2 or args[0] not in ("strip", "check"):
        print(__doc__)
        return 2
    status = 0
    for f in args[1:]:
        if args[0] == "strip":
            if strip(f):
                print(f"stripped {f}")
        else:
            for prob in shape_problems(f):
                print(f"{f}: {prob}")
                status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
