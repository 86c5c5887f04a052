"""Where the time goes: wall seconds and tokens per kind of work, logged by every process.

Off unless ``$SAFEALIGN_WORKLOG`` names a file (the course runner sets one per notebook, with
``$SAFEALIGN_WORKLOG_LABEL`` = the notebook's number). Then each timed call appends one JSON
line (kind, seconds, tokens, process id, role, label, end time) to that file, from the
notebook's kernel and from its pool workers alike (they inherit the environment):

    with worklog.record("training") as w:
        ...
        w["tokens"] += batch["input_ids"].numel()    # tokens the model processed (padding too)

Kinds: ``training`` (optimizer steps), ``generation`` (greedy decoding: prefill and new tokens),
``forward`` (no-grad passes that score prompts or answers: first-token probabilities,
teacher-forced losses), ``activations`` (capturing hidden states or layer inputs) and
``scoring`` (the methods' arithmetic on adapter weights). A call inside another timed call is
counted by the outer one only. :func:`breakdown` sums a log per label and kind.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from pathlib import Path
from typing import TypeVar

import pandas as pd

ENV, LABEL_ENV = "SAFEALIGN_WORKLOG", "SAFEALIGN_WORKLOG_LABEL"
ROLE_ENV = "SAFEALIGN_WORKLOG_ROLE"  # "worker" in pool workers; the notebook's kernel is "main"
KINDS = ("training", "generation", "forward", "activations", "scoring")
F = TypeVar("F", bound=Callable)
_inside = threading.local()


@contextmanager
def record(kind: str) -> Iterator[dict[str, int]]:
    """Time the block as ``kind``; the yielded dict's ``tokens`` may be increased inside it."""
    if kind not in KINDS:
        raise ValueError(f"Unknown kind of work {kind!r}; use one of {KINDS}.")
    path = os.environ.get(ENV)
    counts = {"tokens": 0}
    if not path or getattr(_inside, "active", False):
        yield counts
        return
    _inside.active = True
    t0 = time.perf_counter()
    try:
        yield counts
    finally:
        _inside.active = False
        line = {
            "kind": kind,
            "seconds": time.perf_counter() - t0,
            "tokens": int(counts["tokens"]),
            "pid": os.getpid(),
            "role": os.environ.get(ROLE_ENV, "main"),
            "label": os.environ.get(LABEL_ENV, ""),
            "end": time.time(),  # when it ended (Unix seconds): a timeline of the processes
        }
        with open(path, "a") as f:  # one short append per call: safe from several processes
            f.write(json.dumps(line) + "\n")


def timed(kind: str) -> Callable[[F], F]:
    """Decorator: every call of the function is :func:`record`-ed as ``kind`` (no tokens)."""

    def wrap(fn: F) -> F:
        @wraps(fn)
        def inner(*args, **kwargs):
            with record(kind):
                return fn(*args, **kwargs)

        return inner  # type: ignore[return-value]

    return wrap


def read(paths: Path | str | list[Path]) -> pd.DataFrame:
    """The records of one log file, or of several (a folder's ``*.jsonl``)."""
    paths = [paths] if isinstance(paths, str | Path) else paths
    files: list[Path] = []
    for p in map(Path, paths):
        files += sorted(p.glob("*.jsonl")) if p.is_dir() else [p]
    rows = [json.loads(line) for f in files for line in f.read_text().splitlines() if line]
    return pd.DataFrame(rows, columns=["kind", "seconds", "tokens", "pid", "role", "label", "end"])


def breakdown(log: pd.DataFrame) -> pd.DataFrame:
    """Seconds per label (rows) and kind (columns), summed over processes, with the number of
    processes that did the work."""
    if log.empty:
        return pd.DataFrame(columns=[*KINDS, "processes"])
    table = log.pivot_table(index="label", columns="kind", values="seconds", aggfunc="sum")
    table = table.reindex(columns=list(KINDS)).fillna(0.0)
    table["processes"] = log.groupby("label").pid.nunique()
    return table


def tokens(log: pd.DataFrame) -> pd.DataFrame:
    """Tokens per label (rows) and kind (columns)."""
    if log.empty:
        return pd.DataFrame(columns=list(KINDS))
    table = log.pivot_table(index="label", columns="kind", values="tokens", aggfunc="sum")
    return table.reindex(columns=list(KINDS)).fillna(0).astype(int)
