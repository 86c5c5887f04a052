"""The stated run times (tooling/times.py): every notebook's Time line can be regenerated from
two runs' metrics, and the command rewrites the measured figures and nothing else."""

import json
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
