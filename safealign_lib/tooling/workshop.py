"""Workshop mode: exercise notebooks generated from the solution notebooks.

In a solution notebook (``notebooks/NN_*.ipynb``) the worked solution of each exercise sits in
the exercise code cell between two marker lines, the first line inside them being a hint::

    def is_refusal(response: str, keywords: tuple[str, ...]) -> bool:
        # BEGIN SOLUTION
        # HINT: normalise the apostrophe, then test each keyword as a substring.
        text = response.replace("\\u2019", "'")
        return any(k in text for k in keywords)
        # END SOLUTION

:func:`write_exercises` (``safealign course exercises``, ``make exercises``) writes one exercise
notebook per marked solution notebook into ``exercises/``: every marked block becomes a stub that
raises ``NotImplementedError(<hint>)``, and the collapsed ``<details><summary>Solution`` blocks
of the markdown cells are removed (a cell left empty is dropped). Cell ids are kept, so a diff
against the solution notebook reads cell by cell. The generator stamps each notebook's metadata
with a hash of its cells and only overwrites a file whose cells still match that hash: a
learner's edits are never lost without ``--force``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from safealign_lib.config import REPO_ROOT

BEGIN = "# BEGIN SOLUTION"
END = "# END SOLUTION"
HINT = "# HINT:"
META_KEY = "safealign_exercise"  # notebook metadata: {"source": ..., "cells_sha256": ...}
CHECK_CALL = "exercises.check_"
_SOLUTION_BLOCK = re.compile(r"<details>\s*<summary>\s*Solution\s*</summary>.*?</details>", re.S)
_MAX_LINE = 100  # the repository's ruff line length


def _checkout() -> Path:
    if REPO_ROOT is None:  # a site-packages install has no notebooks beside it
        raise FileNotFoundError(
            "The exercise notebooks are generated from the course's notebooks/ folder: run this "
            "from a clone of the repository installed with `pip install -e .`."
        )
    return REPO_ROOT


def solution_dir() -> Path:
    """The solution notebooks: ``notebooks/`` of the checkout."""
    return _checkout() / "notebooks"


def exercise_dir() -> Path:
    """The default output folder: ``exercises/`` of the checkout (committed, generated)."""
    return _checkout() / "exercises"


@dataclass(frozen=True)
class Region:
    """One marked solution block of a cell: 0-based line numbers of its two markers."""

    begin: int
    end: int
    indent: str
    hint: str


def solution_regions(source: str, where: str = "cell") -> list[Region]:
    """The marked blocks of one code cell's source, checked for balance and a hint line.

    Raises ValueError naming ``where`` and the fix when the markers are malformed.
    """
    lines = source.splitlines()
    regions, begin = [], None
    for i, line in enumerate(lines):
        text = line.strip()
        if text == BEGIN:
            if begin is not None:
                raise ValueError(f"{where}: '{BEGIN}' on line {i + 1} inside another block.")
            begin = i
        elif text == END:
            if begin is None:
                raise ValueError(f"{where}: '{END}' on line {i + 1} without '{BEGIN}'.")
            hint_line = lines[begin + 1].strip() if begin + 1 < i else ""
            if not hint_line.startswith(HINT) or not hint_line[len(HINT) :].strip():
                raise ValueError(
                    f"{where}: the line after '{BEGIN}' (line {begin + 1}) must be "
                    f"'{HINT} <text>', the hint the exercise's stub raises."
                )
            hint = hint_line[len(HINT) :].strip()
            if '"' in hint or "\\" in hint:
                raise ValueError(
                    f"{where}: the hint on line {begin + 2} contains a double quote or a "
                    "backslash; write it as plain text (it becomes a string literal)."
                )
            indent = lines[begin][: len(lines[begin]) - len(lines[begin].lstrip())]
            regions.append(Region(begin, i, indent, hint))
            begin = None
    if begin is not None:
        raise ValueError(f"{where}: '{BEGIN}' on line {begin + 1} has no '{END}'.")
    return regions


def stub(region: Region) -> list[str]:
    """The lines that replace a marked block: a comment and ``raise NotImplementedError``."""
    ind = region.indent
    one_line = f'{ind}raise NotImplementedError("{region.hint}")'
    if len(one_line) <= _MAX_LINE:
        raise_lines = [one_line]
    else:  # the layout ruff format gives a call that does not fit on one line
        raise_lines = [f"{ind}raise NotImplementedError(", f'{ind}    "{region.hint}"', f"{ind})"]
    return [f"{ind}# Your code here: replace the line below, then run the cell.", *raise_lines]


def exercise_source(source: str, where: str = "cell") -> str:
    """A code cell's source with every marked block replaced by its :func:`stub`.

    The cell's own top-level imports stay for the learner's code; once the solution is gone
    ruff would call them unused, so they get a ``noqa: F401`` comment (if they have none).
    """
    lines = source.splitlines()
    regions = solution_regions(source, where)
    for region in reversed(regions):
        lines[region.begin : region.end + 1] = stub(region)
    if regions:
        lines = [
            f"{line}  # noqa: F401  (for your code)"
            if line.startswith(("import ", "from ")) and "#" not in line
            else line
            for line in lines
        ]
    return "\n".join(lines) + ("\n" if source.endswith("\n") else "")


def without_solution(markdown: str) -> str:
    """A markdown cell's source without its collapsed solution blocks (leading space trimmed)."""
    return _SOLUTION_BLOCK.sub("", markdown).lstrip()


def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def _as_lines(text: str) -> list[str]:
    """Jupyter's on-disk form of a source: lines keeping their newline."""
    return text.splitlines(keepends=True)


def is_marked(nb: dict) -> bool:
    """Whether any code cell of the notebook holds a solution marker."""
    return any(c.get("cell_type") == "code" and BEGIN in _source(c) for c in nb.get("cells", []))


def exercise_notebook(nb: dict, source_name: str) -> dict:
    """The exercise version of a parsed solution notebook (the input is not modified).

    Every code cell that calls an ``exercises.check_*`` function must hold a marked block, so
    that no reference solution slips into the exercise notebook.
    """
    cells = []
    for i, cell in enumerate(nb.get("cells", [])):
        src, where = _source(cell), f"{source_name}, cell {i}"
        new = dict(cell)
        if cell.get("cell_type") == "code":
            if CHECK_CALL in src and BEGIN not in src:
                raise ValueError(
                    f"{where}: an exercise cell without '{BEGIN}' / '{END}' markers; put "
                    "the solution code between them (see safealign_lib/tooling/workshop.py)."
                )
            new["source"] = _as_lines(exercise_source(src, where))
        elif cell.get("cell_type") == "markdown" and _SOLUTION_BLOCK.search(src):
            rest = without_solution(src)
            if not rest.strip():
                continue  # the cell held only the solution
            new["source"] = _as_lines(rest)
        cells.append(new)
    title = cells[0]
    lines = _source(title).split("\n", 1)
    banner = (
        f"\n> **Exercise version** of `notebooks/{source_name}`, written by `safealign course "
        "exercises`: each exercise cell raises `NotImplementedError` until you write the "
        "code. The solutions are in the original notebook.\n"
    )
    cells[0] = {**title, "source": _as_lines(lines[0] + "\n" + banner + "".join(lines[1:]))}
    out = {**nb, "cells": cells, "metadata": dict(nb.get("metadata", {}))}
    out["metadata"][META_KEY] = {"source": f"notebooks/{source_name}", "cells_sha256": ""}
    out["metadata"][META_KEY]["cells_sha256"] = cells_hash(out)
    return out


def cells_hash(nb: dict) -> str:
    """A hash of the cells' types and sources: changes when anyone edits a cell."""
    payload = [(c.get("cell_type"), _source(c)) for c in nb.get("cells", [])]
    return hashlib.sha256(json.dumps(payload, ensure_ascii=False).encode()).hexdigest()


def dumps(nb: dict) -> str:
    """The course's notebook file format (what nbstripout and Jupyter write)."""
    return json.dumps(nb, indent=1, ensure_ascii=False) + "\n"


def _untouched(path: Path) -> bool:
    """Whether ``path`` is a notebook this generator wrote and nobody has edited since."""
    try:
        nb = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    stamp = nb.get("metadata", {}).get(META_KEY, {})
    return bool(stamp) and stamp.get("cells_sha256") == cells_hash(nb)


def write_exercises(
    output: str | Path | None = None,
    notebooks: Sequence[str | Path] | None = None,
    force: bool = False,
) -> tuple[list[Path], list[Path]]:
    """Write the exercise notebooks; return (written, skipped solution notebooks).

    ``notebooks`` defaults to every ``notebooks/NN_*.ipynb``; one without any marker is skipped
    (it has no exercise version yet). Existing files are replaced only when this generator wrote
    them and their cells are unchanged, or with ``force``; otherwise nothing is written.
    """
    out = Path(output).expanduser() if output is not None else exercise_dir()
    sources = (
        [Path(p) for p in notebooks]
        if notebooks is not None
        else sorted(solution_dir().glob("[0-9][0-9]_*.ipynb"))
    )
    if not sources:
        raise FileNotFoundError("No solution notebooks (NN_name.ipynb) given or found.")
    planned, skipped = {}, []
    for src in sources:
        nb = json.loads(src.read_text())
        if not is_marked(nb):
            skipped.append(src)
            continue
        planned[out / src.name] = dumps(exercise_notebook(nb, src.name))
    blocked = [
        p
        for p, text in planned.items()
        if p.exists() and p.read_text() != text and not _untouched(p)
    ]
    if blocked and not force:
        names = ", ".join(str(p) for p in blocked)
        raise FileExistsError(
            f"{names}: edited since it was generated (or not written by this generator); "
            "pass --force to overwrite, or --output to write elsewhere."
        )
    out.mkdir(parents=True, exist_ok=True)
    for path, text in planned.items():
        path.write_text(text)
    return list(planned), skipped
