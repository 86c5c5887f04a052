"""The metrics contract: ``build/metrics.json``, keyed by notebook number.

Each notebook's last cell calls :func:`record` with a flat dict of numbers; regression runs
read the same keys, so keep them stable. The keys each notebook must write are in
:mod:`safealign_lib.course.contract`.

Keys starting with ``_`` are reserved for data about the runs, not metrics: ``_provenance``
maps a notebook number to how its entry was made (commit, versions, organism hash, profile,
parameters; :mod:`safealign_lib.tooling.provenance`). Notebook numbers are digits, so a reserved
key never collides with one; :func:`load` leaves them out, so every reader of the metrics still
sees only ``{"00": {...}, "01": {...}}``, and :func:`record` keeps them.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

from safealign_lib.config import REPO_ROOT, build_dir
from safealign_lib.course.contract import REQUIRED, REQUIRED_ORGANISM

RESERVED_PREFIX = "_"  # keys of data about the runs, not of a notebook
PROVENANCE_KEY = "_provenance"


def check_output_path(path: str | os.PathLike, what: str = "output") -> Path:
    """``path`` as a Path, or an error when it lies inside the course's ``notebooks/`` folder
    (outputs never go there: they could overwrite a source notebook)."""
    p = Path(path).expanduser()
    resolved = p.resolve()
    if REPO_ROOT is not None and resolved.is_relative_to((REPO_ROOT / "notebooks").resolve()):
        raise ValueError(
            f"The {what} {p} is inside the course's notebooks/ folder, which holds the source "
            "notebooks; write it under build/ or another folder."
        )
    return p


def metrics_path(path: str | os.PathLike | None = None) -> Path:
    """The metrics file: ``path``, or ``build/metrics.json``."""
    return (
        check_output_path(path, "metrics file")
        if path is not None
        else build_dir() / "metrics.json"
    )


def load(
    path: str | os.PathLike | None = None, must_exist: bool = False
) -> dict[str, dict[str, float]]:
    """All recorded metrics ({} when nothing was recorded yet, unless ``must_exist``)."""
    p = Path(path) if path is not None else metrics_path()
    if not p.is_file():
        if must_exist:
            raise FileNotFoundError(
                f"No metrics file at {p}; run the notebooks first (`safealign course`) or check "
                "the path."
            )
        return {}
    data = {k: v for k, v in _load_all(p).items() if not k.startswith(RESERVED_PREFIX)}
    for nb, values in data.items():
        for k, v in values.items():
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise TypeError(
                    f"{p}: metric {k!r} of notebook {nb} is {v!r}, not a number; the notebooks "
                    "write numbers only: rerun that notebook, or fix the file."
                )
    return data


def _load_all(p: Path) -> dict[str, dict]:
    """The whole file, reserved keys included ({} when there is no file)."""
    if not p.is_file():
        return {}
    try:
        data = json.loads(p.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{p} is not valid JSON ({err}); delete it and rerun the notebooks."
        ) from err
    bad = not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values())
    if bad:
        raise ValueError(
            f"{p} holds a {type(data).__name__}, not the metrics object keyed by notebook "
            '({"00": {...}, "01": {...}}); is it a metrics file? Delete it and rerun.'
        )
    return data


def _write_all(p: Path, data: dict[str, dict]) -> None:
    p.parent.mkdir(parents=True, exist_ok=True)
    # write-then-rename: a crash never leaves a half-written metrics file
    fd, tmp = tempfile.mkstemp(dir=p.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(dict(sorted(data.items())), f, indent=2)
        f.write("\n")
    os.replace(tmp, p)


def load_provenance(path: str | os.PathLike | None = None) -> dict[str, dict]:
    """``{notebook: provenance}`` of the runs behind the metrics file ({} when none recorded)."""
    return _load_all(Path(path) if path is not None else metrics_path()).get(PROVENANCE_KEY, {})


def record_provenance(
    notebook: str, info: dict[str, object], path: str | os.PathLike | None = None
) -> None:
    """Store how ``notebook``'s entry was made (after :func:`record` wrote the entry)."""
    p = metrics_path(path)
    data = _load_all(p)
    data.setdefault(PROVENANCE_KEY, {})[notebook] = info
    _write_all(p, data)


def record_wall_time(notebook: str, seconds: float, path: str | os.PathLike | None = None) -> None:
    """Set ``notebook``'s ``wall_s`` to the runner's measurement (kernel start-up, imports and
    every cell), replacing the notebook's own (time since its set-up cell): one meaning of
    ``wall_s`` in every metrics file the course runner writes (issue 24)."""
    p = metrics_path(path)
    data = _load_all(p)
    if notebook not in data:
        raise KeyError(f"Notebook {notebook} recorded no metrics in {p}; nothing to time.")
    data[notebook]["wall_s"] = float(seconds)
    _write_all(p, data)


def record(
    notebook: str,
    values: dict[str, float],
    path: str | os.PathLike | None = None,
    strict: bool = True,
    profile: object | None = None,
) -> dict[str, float]:
    """Write ``values`` under key ``notebook`` (replacing that notebook's previous entry).

    Values must be finite numbers. With ``strict``, every key the notebook's contract requires
    must be present, so a notebook that silently skipped a section fails loudly; given the run's
    ``profile``, the organism-only keys (the exact judge's) are required on organism profiles.
    """
    clean: dict[str, float] = {}
    for k, v in values.items():
        try:
            f = float(v)
        except (TypeError, ValueError) as err:
            raise TypeError(f"Metric {k!r} of notebook {notebook} is {v!r}, not a number.") from err
        if not math.isfinite(f):
            raise ValueError(f"Metric {k!r} of notebook {notebook} is {f}; metrics must be finite.")
        clean[k] = f
    organism = profile is not None and not getattr(profile, "network", False)
    need = REQUIRED_ORGANISM.get(notebook, ()) if organism else REQUIRED.get(notebook, ())
    missing = [k for k in need if k not in clean]
    if strict and missing:
        raise KeyError(f"Notebook {notebook} did not record required metric(s) {missing}.")
    p = metrics_path(path)
    allm = _load_all(p)
    allm[notebook] = clean
    # a new entry's provenance is unknown until a runner records it: never keep a stale one
    allm.get(PROVENANCE_KEY, {}).pop(notebook, None)
    _write_all(p, allm)
    return clean


def flatten(frame: object, template: str, rename: dict[str, str] | None = None) -> dict[str, float]:
    """A results table as flat metric keys: one key per (row, column), named by ``template``
    with ``{col}`` and the index level names, e.g. ``"{col}_{method}_{condition}"``. ``rename``
    maps index values to their key spelling (``{"Safe LoRA": "safelora"}``)."""
    rename = rename or {}
    names = list(frame.index.names)
    if any(n is None for n in names):
        raise ValueError(f"flatten needs named index levels to fill {template!r}; got {names}.")
    out: dict[str, float] = {}
    for idx, row in frame.iterrows():
        values = idx if isinstance(idx, tuple) else (idx,)
        fields = {n: rename.get(v, v) for n, v in zip(names, values, strict=True)}
        for col, v in row.items():
            out[template.format(col=col, **fields)] = float(v)
    return out
