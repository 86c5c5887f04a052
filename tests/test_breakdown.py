"""The per-notebook time breakdown from papermill's records and the work log."""

from __future__ import annotations

import json

import pytest

from safealign_lib.tooling import breakdown


def _executed(path, start, cells):
    nb = {
        "metadata": {"papermill": {"start_time": start, "duration": 30.0}},
        "cells": [
            {"cell_type": "code", "metadata": {"papermill": {"start_time": t, "duration": d}}}
            for t, d in cells
        ]
        + [{"cell_type": "markdown", "metadata": {}}],
    }
    path.write_text(json.dumps(nb))


def test_course_breakdown_splits_kernel_start_cells_and_kinds(tmp_path):
    _executed(
        tmp_path / "01_a.ipynb",
        "2026-01-01T00:00:00",
        [("2026-01-01T00:00:04", 6.0), ("2026-01-01T00:00:10", 20.0)],
    )
    (tmp_path / "worklog").mkdir()
    lines = [
        {"kind": "training", "seconds": 10.0, "tokens": 100, "pid": 1, "role": "main"},
        {"kind": "training", "seconds": 12.0, "tokens": 120, "pid": 2, "role": "worker"},
        {"kind": "generation", "seconds": 3.0, "tokens": 50, "pid": 1, "role": "main"},
    ]
    (tmp_path / "worklog" / "01.jsonl").write_text(
        "".join(json.dumps({**x, "label": "01"}) + "\n" for x in lines)
    )
    table = breakdown.course_breakdown(tmp_path)
    row = table.loc["01"]
    assert row.wall_s == 30.0 and row.kernel_start_s == 4.0 and row.cells_s == 26.0
    assert row.training == 22.0 and row.generation == 3.0 and row.scoring == 0.0
    assert row["other (kernel)"] == 13.0  # 26 s of cells, 13 s logged by the kernel
    assert row.processes == 2 and table.loc["total", "cells_s"] == 26.0
    assert "training" in breakdown.breakdown_text(table)
    assert breakdown.course_breakdown(tmp_path, ["02"]).empty


def test_a_notebook_without_papermill_timings_is_named(tmp_path):
    (tmp_path / "01_a.ipynb").write_text(json.dumps({"metadata": {}, "cells": []}))
    with pytest.raises(ValueError, match="no papermill timings"):
        breakdown.course_breakdown(tmp_path)
