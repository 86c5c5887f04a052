"""Measurements cached under ``build/``, keyed by everything they depend on.

A cached table is stored as CSV files under ``<build>/adapters/<profile>/<kind>/<key>/``, where
the key is a digest of a spec the caller gives: the keys of the adapters measured, the split,
the settings and a digest of the source of the code that measures (:func:`source_digest`). A
change to any of them gives a new key, so nothing stale is ever read; a folder is complete only
when its last file is written, so an interrupted run leaves no entry that looks finished.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import ModuleType

import pandas as pd

from safealign_lib.config import build_dir


def source_digest(*modules: ModuleType) -> str:
    """A digest of the modules' source: a cached result never outlives a code change. A
    package counts with every module in it (``methods.salora`` is six files)."""
    parts = []
    for m in modules:
        if hasattr(m, "__path__"):  # a package: its __init__ and every module below it
            files = sorted(f for d in m.__path__ for f in Path(d).rglob("*.py"))
            parts += [f.read_text(encoding="utf-8") for f in files]
        else:
            parts.append(inspect.getsource(m))
    return hashlib.sha256("".join(parts).encode()).hexdigest()[:12]


def spec_key(spec: Mapping[str, object]) -> str:
    """A short digest of a JSON-able spec."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:12]


def cached_tables(
    folder: Path, names: Sequence[str], compute: Callable[[], Sequence[pd.DataFrame]]
) -> tuple[pd.DataFrame, ...]:
    """The tables ``names`` read from ``folder`` when all are there, else ``compute()``'d and
    written (the first name last: its file marks a complete entry)."""
    files = [folder / f"{n}.csv" for n in names]
    if all(f.is_file() for f in files):
        return tuple(pd.read_csv(f) for f in files)
    tables = tuple(compute())
    if len(tables) != len(names):
        raise ValueError(f"compute() gave {len(tables)} tables for the names {list(names)}.")
    folder.mkdir(parents=True, exist_ok=True)
    for f, t in reversed(list(zip(files, tables, strict=True))):
        t.to_csv(f, index=False)
    return tables


def folder_for(
    profile_name: str, kind: str, spec: Mapping[str, object], root: str | Path | None = None
) -> Path:
    """Where a cached measurement of ``kind`` with ``spec`` lives."""
    base = Path(root) if root is not None else build_dir() / "adapters"
    return base / profile_name / kind / spec_key(spec)
