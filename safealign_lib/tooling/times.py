"""The run times the course states, written from measurements by a command so they cannot drift.

Each notebook's **Time:** line and the README's course map carry two measured figures: the
runner's wall time of the notebook (kernel start-up included, ``wall_s`` in the metrics file) in
a run of the whole course from an empty build folder, and in a second run on the same build
folder (every trained model and cached measurement read back). ``safealign course times --cold
COLD.json --cached CACHED.json`` rewrites both from two such metrics files; nothing else in the
line changes. The generated parts of a Time line read::

    **Time:** about 8 minutes on a laptop CPU (measured 472 s from an empty build folder, 31 s
    when `build/` is filled; profile `cpu`: ... what it runs ...); 30 minutes to read.

The reading time is measured on the executed notebook (``--executed DIR``: a run's
``executed/`` folder, whose outputs are what a learner reads) by counting what there is to read
and pricing each kind at the rates of :data:`READING_RATES` (:func:`reading_minutes`): the same
count for every notebook, so that a workshop agenda built from it gives each notebook the time
its contents need.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path

TIME_LINE = re.compile(
    r"^\*\*Time:\*\* (?P<about>[^(]+?) on a laptop CPU \(measured (?P<cold>[\d,.]+) s from an "
    r"empty build folder, (?P<cached>[\d,.]+) s when `build/` is filled;"
)
READ_TAIL = re.compile(r"; (?P<minutes>\d+) minutes to read\.")
# What a learner reads, and how fast: prose at a careful reading speed for technical text (well
# below the ~240 words a minute of silent reading of general non-fiction), code read line by
# line, each figure and each table looked at, printed output lines skimmed.
READING_RATES = {
    "prose words per minute": 150.0,
    "code lines per minute": 20.0,
    "minutes per figure": 1.0,
    "minutes per table": 1.0,
    "printed lines per minute": 40.0,
}
MAP_ROW = re.compile(
    r"^\| `(?P<name>\d\d_[a-z_]+)` \|(?P<what>[^|]*)\|(?P<cold>[^|]*)\|(?P<cached>[^|]*)\|$"
)


def about(seconds: float) -> str:
    """A run time in words: "about 20 seconds", "about 8 minutes"."""
    if seconds < 90:
        return f"about {max(10, round(seconds, -1)):.0f} seconds"
    return f"about {round(seconds / 60):.0f} minutes"


def short(seconds: float) -> str:
    """A run time for the course map: "13 s", "7.9 min"."""
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def reading_counts(path: Path | str) -> dict[str, int]:
    """What there is to read in an executed notebook: prose words (markdown, badges left out),
    code lines (no blank or comment-only lines, no parameters cell), figures, tables (HTML
    outputs) and printed output lines (a bare value's text, such as the metrics dictionary of
    the last cell, is not counted)."""
    nb = json.loads(Path(path).read_text())
    counts = dict.fromkeys(("words", "code", "figures", "tables", "printed"), 0)
    for cell in nb["cells"]:
        text = "".join(cell["source"])
        if cell["cell_type"] == "markdown":
            text = re.sub(r"\[!\[[^\]]*\]\([^)]*\)\]\([^)]*\)", "", text)  # badges
            counts["words"] += len(text.split())
            continue
        if cell["cell_type"] != "code":
            continue
        tags = cell.get("metadata", {}).get("tags", [])
        if "parameters" in tags or "injected-parameters" in tags:
            continue
        lines = [ln.strip() for ln in text.splitlines()]
        counts["code"] += sum(1 for ln in lines if ln and not ln.startswith("#"))
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if "image/png" in data or "image/svg+xml" in data:
                counts["figures"] += 1
            elif "text/html" in data:
                counts["tables"] += 1
            elif out.get("output_type") == "stream":  # printed lines; not a bare repr
                counts["printed"] += len("".join(out.get("text", "")).splitlines())
    return counts


def reading_minutes(path: Path | str, rates: Mapping[str, float] = READING_RATES) -> float:
    """The minutes a learner needs to read an executed notebook (:func:`reading_counts` at
    ``rates``; see :data:`READING_RATES`)."""
    c = reading_counts(path)
    return (
        c["words"] / rates["prose words per minute"]
        + c["code"] / rates["code lines per minute"]
        + c["figures"] * rates["minutes per figure"]
        + c["tables"] * rates["minutes per table"]
        + c["printed"] / rates["printed lines per minute"]
    )


def with_reading(line: str, minutes: float) -> str:
    """``line`` (a Time line) with its "N minutes to read." written from ``minutes`` (rounded
    up to 5)."""
    if READ_TAIL.search(line) is None:
        raise ValueError(f"No '; N minutes to read.' in the Time line {line[:90]!r}.")
    n = 5 * math.ceil(minutes / 5)
    return READ_TAIL.sub(f"; {n} minutes to read.", line, count=1)


def wall_times(metrics: Path | str) -> dict[str, float]:
    """``wall_s`` per notebook number in a metrics file the course runner wrote."""
    data = json.loads(Path(metrics).read_text())
    out = {nb: float(v["wall_s"]) for nb, v in data.items() if "wall_s" in v}
    if not out:
        raise ValueError(f"{metrics} holds no notebook's wall_s: pass a course run's metrics.json.")
    return out


def time_line(line: str, cold: float, cached: float) -> str:
    """``line`` (a notebook's **Time:** line) with its measured figures replaced."""
    m = TIME_LINE.match(line)
    if m is None:
        raise ValueError(
            "Not a generated Time line: it must start with '**Time:** about ... on a laptop CPU "
            "(measured N s from an empty build folder, M s when `build/` is filled;' "
            f"(safealign_lib/tooling/times.py), got {line[:90]!r}."
        )
    new = (
        f"**Time:** {about(cold)} on a laptop CPU (measured {cold:.0f} s from an empty build "
        f"folder, {cached:.0f} s when `build/` is filled;"
    )
    return new + line[m.end() :]


def rewrite_notebook(path: Path, cold: float, cached: float, reading: float | None = None) -> bool:
    """Rewrite the Time line in the first cell of the notebook at ``path`` (and its reading
    minutes, when ``reading`` is given); True if it changed."""
    nb = json.loads(path.read_text())
    cell = nb["cells"][0]
    lines = "".join(cell["source"]).split("\n")
    i = next((k for k, ln in enumerate(lines) if ln.startswith("**Time:**")), None)
    if i is None:
        raise ValueError(f"{path.name} has no **Time:** line in its first cell.")
    new = time_line(lines[i], cold, cached)
    if reading is not None:
        new = with_reading(new, reading)
    if new == lines[i]:
        return False
    lines[i] = new
    text = "\n".join(lines)
    cell["source"] = text.splitlines(keepends=True)
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    return True


def rewrite_map(readme: str, cold: Mapping[str, float], cached: Mapping[str, float]) -> str:
    """The README text with the course map's two time columns written from the measurements
    (rows of notebooks not measured in both runs are left as they are)."""
    out = []
    for line in readme.split("\n"):
        m = MAP_ROW.match(line)
        nb = m["name"][:2] if m else None
        if m and nb in cold and nb in cached:
            line = f"| `{m['name']}` |{m['what']}| {short(cold[nb])} | {short(cached[nb])} |"
        out.append(line)
    return "\n".join(out)


def write_times(
    cold_metrics: Path | str,
    cached_metrics: Path | str,
    notebooks: Path | str,
    readme: Path | str | None = None,
    executed: Path | str | None = None,
) -> list[str]:
    """Rewrite every measured notebook's Time line (and the README's course map) from the
    two runs' metrics, and its reading minutes from the executed copies in ``executed`` when
    given; returns the names of the files that changed."""
    cold, cached = wall_times(cold_metrics), wall_times(cached_metrics)
    changed = []
    for path in sorted(Path(notebooks).glob("[0-9][0-9]_*.ipynb")):
        nb = path.name[:2]
        copy = Path(executed) / path.name if executed is not None else None
        if copy is not None and not copy.is_file():
            raise FileNotFoundError(
                f"No executed copy of {path.name} in {executed}: pass the executed/ folder of "
                "the cold run (safealign course run --output DIR writes DIR/executed/)."
            )
        reading = reading_minutes(copy) if copy is not None else None
        if nb in cold and nb in cached and rewrite_notebook(path, cold[nb], cached[nb], reading):
            changed.append(path.name)
    if readme is not None:
        text = Path(readme).read_text()
        new = rewrite_map(text, cold, cached)
        if new != text:
            Path(readme).write_text(new)
            changed.append(Path(readme).name)
    return changed
