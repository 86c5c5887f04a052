"""The stated run times (tooling/times.py): every notebook's Time line can be regenerated from
two runs' metrics, and the command rewrites the measured figures and nothing else."""

import json
import re
import shutil
from pathlib import Path

import pytest

from safealign_lib.tooling import runner, times


def _time_line(path: Path) -> str:
    text = "".join(json.loads(path.read_text())["cells"][0]["source"])
    return next(ln for ln in text.split("\n") if ln.startswith("**Time:**"))


@pytest.mark.parametrize("path", runner.list_notebooks(), ids=lambda p: p.name)
def test_every_time_line_is_generated(path):
    assert times.TIME_LINE.match(_time_line(path)), "regenerate it: safealign course times"


def test_the_words_for_a_time():
    assert times.about(9) == "about 10 seconds" and times.about(17) == "about 20 seconds"
    assert times.about(472) == "about 8 minutes" and times.about(90) == "about 2 minutes"
    assert times.short(13.2) == "13 s" and times.short(472) == "7.9 min"


def test_a_time_line_keeps_everything_but_the_measurements():
    line = (
        "**Time:** about 8 minutes on a laptop CPU (measured 472 s from an empty build folder, "
        "30 s when `build/` is filled; profile `cpu`: 6 conditions); 30 minutes to read."
    )
    new = times.time_line(line, 95.4, 12.6)
    assert new == (
        "**Time:** about 2 minutes on a laptop CPU (measured 95 s from an empty build folder, "
        "13 s when `build/` is filled; profile `cpu`: 6 conditions); 30 minutes to read."
    )
    with pytest.raises(ValueError, match="generated Time line"):
        times.time_line("**Time:** about 8 minutes (measured 472 s).", 1.0, 1.0)


def test_the_command_rewrites_the_notebooks_and_the_course_map(tmp_path):
    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    for p in runner.list_notebooks(["00", "01"]):
        shutil.copy(p, nbs / p.name)
    readme = tmp_path / "README.md"
    readme.write_text(
        "| notebook | what | first run | cached |\n|---|---|---|---|\n"
        "| `00_model_organism` | meet it | 11 s | 18 s |\n"
        "| `02_linear_probes` | probes | 35 s | 50 s |\n"
    )
    cold, cached = tmp_path / "cold.json", tmp_path / "cached.json"
    cold.write_text(
        json.dumps({"00": {"wall_s": 12.0}, "01": {"wall_s": 400.0}, "_provenance": {}})
    )
    cached.write_text(json.dumps({"00": {"wall_s": 14.0}, "01": {"wall_s": 33.0}}))
    changed = times.write_times(cold, cached, nbs, readme)
    assert sorted(changed) == sorted([*(p.name for p in nbs.iterdir()), "README.md"])
    line = _time_line(nbs / runner.list_notebooks(["01"])[0].name)
    assert "measured 400 s from an empty build folder, 33 s when `build/` is filled" in line
    assert line.startswith("**Time:** about 7 minutes")
    rows = readme.read_text().split("\n")
    assert rows[2] == "| `00_model_organism` | meet it | 12 s | 14 s |"
    assert rows[3] == "| `02_linear_probes` | probes | 35 s | 50 s |"  # not measured: kept
    assert times.write_times(cold, cached, nbs, readme) == []  # idempotent
    untimed = tmp_path / "untimed.json"
    untimed.write_text(json.dumps({"00": {"utility": 0.5}}))
    with pytest.raises(ValueError, match="wall_s"):
        times.write_times(cold, untimed, nbs)


def _executed(tmp_path: Path) -> Path:
    """An executed notebook with 300 prose words, 40 code lines, 2 figures, 3 tables and 8
    printed lines (and what is not counted: badges, comments, the parameters, a bare repr)."""
    md = "[![Binder](https://b/x.svg)](https://b/y) " + "word " * 300
    code = "# a comment\n\n" + "x = 1\n" * 40
    outputs = [
        {"output_type": "display_data", "data": {"image/png": "..."}},
        {"output_type": "display_data", "data": {"image/png": "..."}},
        *({"output_type": "execute_result", "data": {"text/html": "<t>", "text/plain": "t"}},) * 3,
        {"output_type": "stream", "name": "stdout", "text": "a\n" * 8},
        {"output_type": "execute_result", "data": {"text/plain": "{'k': 1,\n 'l': 2}"}},
    ]
    nb = {
        "cells": [
            {"cell_type": "markdown", "metadata": {}, "source": [md]},
            {"cell_type": "code", "metadata": {"tags": ["parameters"]}, "source": ["p = 1\n"] * 9},
            {"cell_type": "code", "metadata": {}, "source": [code], "outputs": outputs},
        ]
    }
    path = tmp_path / "00_model_organism.ipynb"
    path.write_text(json.dumps(nb))
    return path


def test_reading_time_is_counted_from_the_executed_notebook(tmp_path):
    """Issue 24: a notebook's reading minutes are measured on what it shows, at the same
    declared rates for every notebook, not typed."""
    path = _executed(tmp_path)
    c = times.reading_counts(path)
    assert c == {"words": 300, "code": 40, "figures": 2, "tables": 3, "printed": 8}
    r = times.READING_RATES
    want = 300 / r["prose words per minute"] + 40 / r["code lines per minute"] + 2 + 3 + 8 / 40
    assert times.reading_minutes(path) == pytest.approx(want)
    line = "**Time:** about 2 minutes on a laptop CPU (...); 30 minutes to read. It reads."
    assert times.with_reading(line, 11.2) == line.replace("30 minutes", "15 minutes")
    with pytest.raises(ValueError, match="minutes to read"):
        times.with_reading("**Time:** no reading time", 3.0)


def test_the_command_writes_the_reading_minutes_from_the_executed_copies(tmp_path):
    nbs, executed = tmp_path / "notebooks", tmp_path / "executed"
    nbs.mkdir()
    executed.mkdir()
    (p,) = runner.list_notebooks(["00"])
    shutil.copy(p, nbs / p.name)
    _executed(executed)  # executed/00_model_organism.ipynb: 9.2 minutes -> 10
    cold, cached = tmp_path / "cold.json", tmp_path / "cached.json"
    cold.write_text(json.dumps({"00": {"wall_s": 12.0}}))
    cached.write_text(json.dumps({"00": {"wall_s": 11.0}}))
    assert times.write_times(cold, cached, nbs, executed=executed) == [p.name]
    assert _time_line(nbs / p.name).endswith("; 10 minutes to read.")
    with pytest.raises(FileNotFoundError, match="executed copy"):
        times.write_times(cold, cached, nbs, executed=tmp_path)


def _reading(number: str) -> int:
    (path,) = runner.list_notebooks([number])
    return int(times.READ_TAIL.search(_time_line(path))["minutes"])


def test_the_workshop_agenda_reads_the_measured_reading_times():
    """Issue 24: each notebook's slot in the README's 3-hour agenda gives it the reading
    minutes measured on its executed copy (its Time line), and the start times add up."""
    from safealign_lib.config import REPO_ROOT

    if REPO_ROOT is None:
        pytest.skip("not a checkout: no README")
    text = (REPO_ROOT / "README.md").read_text().split("**A 3-hour agenda.**")[1]
    table = text[text.index("| start |") :].split("\n\n")[0].split("\n")[2:]
    rows = [ln for ln in table if ln.startswith("|")]
    clock = []
    for row in rows:
        t, slot, minutes = (c.strip() for c in row.strip("|").split("|"))
        numbers = [int(x) for x in re.findall(r"\d+", minutes)]
        m = re.search(r"\*\*(\d\d)\*\*", slot)
        if m:
            assert numbers[0] == _reading(m[1]), f"{m[1]}: the agenda's minutes are stale"
        if t:
            h, mm = t.split(":")
            clock.append((int(h) * 60 + int(mm), sum(numbers)))
    assert len(clock) >= 5
    for (t0, length), (t1, _) in zip(clock, clock[1:], strict=False):
        assert t1 == t0 + length, f"the slot at {t0} min lasts {length} min, the next starts {t1}"
    assert clock[-1][0] + clock[-1][1] <= 180, "the agenda overruns 3 hours"
