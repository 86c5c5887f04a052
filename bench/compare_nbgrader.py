"""nbgrader's ClearSolutions against the course's exercise generator, cell by cell.

    .venv/bin/python bench/compare_nbgrader.py --nbgrader-python /tmp/nbg-venv/bin/python \
        [--notebooks DIR]

nbgrader is not a course dependency: it runs in its own environment (``python3.11 -m venv
/tmp/nbg-venv && /tmp/nbg-venv/bin/pip install "nbgrader==0.9.*"``), given by
``--nbgrader-python``. The solution notebooks (``notebooks/NN_*.ipynb``, or copies in
``--notebooks``) are copied to a temporary folder; nothing is written into the checkout.

Three student versions of every notebook, compared cell by cell with the course's:

- ``course``: the course's generator (``workshop.exercise_notebook``);
- ``nbgrader``: ``ClearSolutions`` with the course's markers (``begin_solution_delimeter =
  "# BEGIN SOLUTION"``, ``end_solution_delimeter = "# END SOLUTION"``), the course's stub
  comment and a bare ``raise NotImplementedError()`` as ``code_stub`` (nbgrader has one stub
  for every region), ``enforce_metadata = False`` (the course's cells carry no nbgrader
  metadata);
- ``nbgrader, hint kept``: the same, after moving each ``# HINT:`` line above its
  ``# BEGIN SOLUTION`` line, the change of marker format that would keep the hint as a comment.

Then the full pipeline, ``nbgrader generate_assignment``, on one notebook in an nbgrader course
folder, and the line count of the generator's functions that ClearSolutions would stand in for.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from safealign_lib.tooling import workshop

STUB_COMMENT = "# Your code here: replace the line below, then run the cell."

NBGRADER_PROGRAM = r"""
import json, sys
import nbformat
from traitlets.config import Config
from nbgrader.preprocessors import ClearSolutions

src, dst, stub = sys.argv[1], sys.argv[2], sys.argv[3]
c = Config()
c.ClearSolutions.begin_solution_delimeter = "# BEGIN SOLUTION"
c.ClearSolutions.end_solution_delimeter = "# END SOLUTION"
c.ClearSolutions.code_stub = {"python": stub}
c.ClearSolutions.enforce_metadata = False
nb = nbformat.read(src, as_version=4)
try:
    nb, _ = ClearSolutions(config=c).preprocess(nb, {})
except Exception as err:
    print(json.dumps({"error": f"{type(err).__name__}: {err}"}))
    sys.exit(0)
nbformat.write(nb, dst)
print(json.dumps({"error": None}))
"""


def source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def hint_above_marker(nb: dict) -> dict:
    """The notebook with each ``# HINT:`` line moved above its ``# BEGIN SOLUTION`` line."""
    out = json.loads(json.dumps(nb))
    for cell in out["cells"]:
        if cell["cell_type"] != "code":
            continue
        lines = source(cell).split("\n")
        for i in range(len(lines) - 1):
            if lines[i].strip() == "# BEGIN SOLUTION" and lines[i + 1].strip().startswith(
                "# HINT:"
            ):
                lines[i], lines[i + 1] = lines[i + 1], lines[i]
        cell["source"] = "\n".join(lines)
    return out


def run_nbgrader(python: str, nb: dict, work: Path, name: str) -> tuple[dict | None, str | None]:
    src, dst = work / f"in_{name}", work / f"out_{name}"
    src.write_text(json.dumps(nb))
    stub = f"{STUB_COMMENT}\nraise NotImplementedError()"
    res = subprocess.run(
        [python, "-c", NBGRADER_PROGRAM, str(src), str(dst), stub],
        capture_output=True,
        text=True,
        check=True,
    )
    err = json.loads(res.stdout.strip().splitlines()[-1])["error"]
    return (None, err) if err else (json.loads(dst.read_text()), None)


def classify(course: dict, other: dict) -> dict[str, list[str]]:
    """Cell-by-cell differences of ``other`` from ``course``, matched by cell id."""
    by_id = {c.get("id"): c for c in other["cells"]}
    ids = {c.get("id") for c in course["cells"]}
    kinds: dict[str, list[str]] = {}

    def add(kind: str, where: str) -> None:
        kinds.setdefault(kind, []).append(where)

    for i, cell in enumerate(course["cells"]):
        where = f"cell {i}"
        o = by_id.get(cell.get("id"))
        if o is None:
            add("missing in nbgrader's", where)
            continue
        a, b = source(cell), source(o)
        if a == b:
            add("identical", where)
        elif i == 0 and "Exercise version" in a:
            add("title banner (course only)", where)
        elif cell["cell_type"] == "code":
            a_l, b_l = a.split("\n"), b.split("\n")
            if "noqa: F401" in a and [x.split("  # noqa")[0] for x in a_l] == b_l:
                add("import lines: course adds noqa F401", where)
            elif "NotImplementedError(" in a and "# HINT:" in b:
                add("stub: hint as a comment, bare raise", where)
            elif "NotImplementedError(" in a:
                add("stub: course raises with the hint, nbgrader drops it", where)
            else:
                add("other code difference", where)
        else:
            add("markdown: solution kept by nbgrader", where)
    for j, o in enumerate(other["cells"]):
        if o.get("id") not in ids:
            add("extra in nbgrader's (course drops it)", f"cell {j}")
    return kinds


def function_lines(module, names: list[str]) -> dict[str, int]:
    tree = ast.parse(inspect.getsource(module))
    return {
        n.name: n.end_lineno - n.lineno + 1
        for n in tree.body
        if isinstance(n, ast.FunctionDef | ast.ClassDef) and n.name in names
    }


def generate_assignment(python: str, nb_path: Path, work: Path, metadata: bool) -> str:
    """``nbgrader generate_assignment`` on one notebook (with ``metadata``: after marking each
    exercise cell as an nbgrader solution cell); exit code, errors, or what the stub became."""
    course = work / f"nbg_course_{int(metadata)}"
    (course / "source" / "ps1").mkdir(parents=True)
    nb = json.loads(nb_path.read_text())
    if metadata:
        marked = [
            c for c in nb["cells"] if c["cell_type"] == "code" and "# BEGIN SOLUTION" in source(c)
        ]
        for k, cell in enumerate(marked):
            cell["metadata"]["nbgrader"] = {
                "solution": True,
                "grade": False,
                "locked": False,
                "grade_id": f"ex{k}",
                "schema_version": 3,
            }
    (course / "source" / "ps1" / nb_path.name).write_text(json.dumps(nb))
    (course / "nbgrader_config.py").write_text(
        "c = get_config()\n"
        "c.CourseDirectory.course_id = 'safealign'\n"
        "c.ClearSolutions.begin_solution_delimeter = '# BEGIN SOLUTION'\n"
        "c.ClearSolutions.end_solution_delimeter = '# END SOLUTION'\n"
    )
    nbgrader = str(Path(python).with_name("nbgrader"))
    res = subprocess.run(
        [nbgrader, "generate_assignment", "ps1", "--force"],
        cwd=course,
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": f"{Path(python).parent}{os.pathsep}{os.environ['PATH']}"},
    )
    out = (res.stdout + res.stderr).strip().splitlines()
    errors = [line.strip() for line in out if line.strip().startswith("RuntimeError")]
    released = course / "release" / "ps1" / nb_path.name
    if res.returncode or not released.exists():
        return f"exit {res.returncode}; " + (" | ".join(errors[:1]) or out[-1])
    cells = json.loads(released.read_text())["cells"]
    stubs = [source(c) for c in cells if "NotImplementedError" in source(c)]
    leaks = sum("<summary>Solution" in source(c) for c in cells)
    return (
        f"exit 0; {len(stubs)} stubs, first:\n    "
        + stubs[0].replace("\n", "\n    ")
        + f"\n  markdown cells still holding a solution: {leaks}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nbgrader-python", required=True)
    ap.add_argument("--notebooks", default=None, help="folder of NN_*.ipynb (default notebooks/)")
    args = ap.parse_args()
    ws = workshop
    folder = Path(args.notebooks) if args.notebooks else ws.solution_dir()
    version = subprocess.run(
        [args.nbgrader_python, "-c", "import nbgrader; print(nbgrader.__version__)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    print(f"nbgrader {version}; course generator {ws.__name__}; notebooks from {folder}\n")
    totals: dict[str, dict[str, int]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for path in sorted(folder.glob("[0-9][0-9]_*.ipynb")):
            nb = json.loads(path.read_text())
            if not ws.is_marked(nb):
                continue
            course = ws.exercise_notebook(nb, path.name)
            variants = {
                "nbgrader": run_nbgrader(args.nbgrader_python, nb, work, path.name),
                "nbgrader, hint kept": run_nbgrader(
                    args.nbgrader_python, hint_above_marker(nb), work, "h" + path.name
                ),
            }
            for variant, (out, err) in variants.items():
                if err:
                    print(f"{path.name} [{variant}]: failed: {err}")
                    continue
                kinds = classify(course, out)
                summary = ", ".join(f"{k}: {len(v)}" for k, v in kinds.items())
                print(f"{path.name} [{variant}]: {summary}")
                t = totals.setdefault(variant, {})
                for k, v in kinds.items():
                    t[k] = t.get(k, 0) + len(v)
                if variant == "nbgrader" and path.name.startswith("01_"):
                    for i, cell in enumerate(course["cells"]):
                        o = {c.get("id"): c for c in out["cells"]}.get(cell.get("id"))
                        if o and cell["cell_type"] == "code" and source(cell) != source(o):
                            print(
                                f"  example, cell {i}, course:\n    "
                                + source(cell).replace("\n", "\n    ")
                            )
                            print("  nbgrader:\n    " + source(o).replace("\n", "\n    "))
                            break
        print("\nTotals over the notebooks (cells):")
        for variant, t in totals.items():
            print(f"  {variant}: " + ", ".join(f"{k} {v}" for k, v in t.items()))
        first = sorted(folder.glob("01_*.ipynb"))[0]
        for metadata in (False, True):
            what = "with solution-cell metadata" if metadata else "as it is"
            result = generate_assignment(args.nbgrader_python, first, work, metadata)
            print(f"\nnbgrader generate_assignment on {first.name}, {what}: {result}")
    names = ["Region", "solution_regions", "stub", "exercise_source"]
    lines = function_lines(ws, names)
    total = len(inspect.getsource(ws).splitlines())
    print(
        f"\n{ws.__name__}: {total} lines; the parts ClearSolutions covers (marker parsing and "
        f"stub): {lines} = {sum(lines.values())} lines"
    )


if __name__ == "__main__":
    sys.exit(main())
