"""Where a course run's time went, per notebook: kernel start-up and cells from papermill's
records, and the kinds of work from the run's work log (:mod:`safealign_lib.worklog`).

    table = breakdown.course_breakdown(Path("build/executed"))   # one row per notebook

The kinds are process-seconds summed over the notebook's kernel and its pool workers, so with
two processes at work they can add up to more than the notebook's wall time; ``other (kernel)``
is the kernel's cell time outside the logged kinds (imports, model loading, tables, figures).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import pandas as pd

from safealign_lib import worklog


def _seconds(a: str, b: str) -> float:
    return (datetime.fromisoformat(b) - datetime.fromisoformat(a)).total_seconds()


def notebook_times(executed: Path) -> dict[str, float]:
    """``wall_s``, ``kernel_start_s`` (notebook start to its first cell) and ``cells_s`` of a
    notebook executed by papermill."""
    nb = json.loads(Path(executed).read_text())
    meta = nb.get("metadata", {}).get("papermill", {})
    cells = [c["metadata"]["papermill"] for c in nb["cells"] if c.get("cell_type") == "code"]
    cells = [c for c in cells if c.get("start_time") and c.get("duration") is not None]
    if not meta.get("start_time") or not cells:
        raise ValueError(f"{executed} has no papermill timings; run it with `safealign course`.")
    return {
        "wall_s": float(meta.get("duration") or 0.0),
        "kernel_start_s": max(0.0, _seconds(meta["start_time"], cells[0]["start_time"])),
        "cells_s": float(sum(c["duration"] for c in cells)),
    }


def course_breakdown(out_dir: Path, numbers: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per executed notebook in ``out_dir`` (those numbered ``numbers``): its times
    (:func:`notebook_times`), the process-seconds of each kind of work, ``other (kernel)`` and
    the number of processes."""
    log = worklog.read(Path(out_dir) / "worklog") if (Path(out_dir) / "worklog").is_dir() else None
    rows = []
    for path in sorted(Path(out_dir).glob("[0-9][0-9]_*.ipynb")):
        number = path.name[:2]
        if numbers is not None and number not in numbers:
            continue
        row: dict[str, object] = {"notebook": number, **notebook_times(path)}
        mine = log[log.label == number] if log is not None else pd.DataFrame()
        for kind in worklog.KINDS:
            row[kind] = float(mine[mine.kind == kind].seconds.sum()) if len(mine) else 0.0
        kernel = mine[mine.role == "main"].seconds.sum() if len(mine) else 0.0
        row["other (kernel)"] = max(0.0, row["cells_s"] - float(kernel))  # type: ignore[operator]
        row["processes"] = int(mine.pid.nunique()) if len(mine) else 1
        rows.append(row)
    table = pd.DataFrame(rows).set_index("notebook") if rows else pd.DataFrame()
    if len(table):
        table.loc["total"] = table.sum(numeric_only=True)
        table.loc["total", "processes"] = table["processes"].iloc[:-1].max()
    return table


def breakdown_text(table: pd.DataFrame) -> str:
    """The table as fixed-width text (seconds to 0.1)."""
    return table.round(1).to_string()
