"""Notebook hygiene: check the course's notebook shape (outputs are stripped by nbstripout).

``python -m safealign_lib.tooling.nbtools check FILE...`` exits non-zero on a shape problem;
``make strip`` (``nbstripout --keep-id``) strips outputs, and ``make lint`` verifies it.
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

from safealign_lib.course import launch
from safealign_lib.tooling import workshop


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
    if len(params) == 1:
        after = code[code.index(params[0]) + 1 :] if params[0] in code else []
        if not after or "notebook_setup(" not in "".join(after[0]["source"]):
            problems.append("the cell after the parameters does not call notebook_setup(...)")
    for i, c in enumerate(code):
        src = "".join(c["source"])
        if workshop.BEGIN in src or workshop.END in src:
            try:  # the solution markers the exercise notebooks are generated from
                workshop.solution_regions(src, f"code cell {i}")
            except ValueError as err:
                problems.append(str(err))
        if "exercises.check_" in src:
            continue  # an exercise cell: the learner's function is defined here
        try:
            tree = ast.parse(src)
        except SyntaxError:
            continue  # IPython magics; the kernel reports real syntax errors
        defs = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.Lambda)]
        if defs:
            problems.append(
                f"code cell {i} defines a function: helpers belong in safealign_lib (only "
                "exercise cells define the learner's function)"
            )
    return problems


def code_lines(path: str | Path) -> int:
    """Non-blank, non-comment lines of the notebook's code cells, leaving out exercise solutions
    (between the workshop markers): they are the learner's code, a one-line stub in the
    exercise notebooks, and cannot move to the library. The hosted-runtime set-up cell
    (:func:`~safealign_lib.course.launch.setup_cell`, the same in every notebook and checked by
    its own test) is left out too."""
    nb = json.loads(Path(path).read_text())
    count = 0
    for c in nb.get("cells", []):
        if c.get("cell_type") != "code" or "".join(c["source"]) == launch.setup_cell():
            continue
        in_solution = False
        for line in "".join(c["source"]).splitlines():
            text = line.strip()
            if text in (workshop.BEGIN, workshop.END):
                in_solution = text == workshop.BEGIN
            elif text and not text.startswith("#") and not in_solution:
                count += 1
    return count


def _is_literal(node: ast.AST) -> bool:
    try:
        ast.literal_eval(node)
        return True
    except ValueError:
        return False


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 2 or args[0] != "check":
        print(__doc__)
        return 2
    status = 0
    for f in args[1:]:
        for prob in shape_problems(f):
            print(f"{f}: {prob}")
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
