"""The course data on disk: writing the generated splits (:func:`write`) and reading them back
(:func:`load_split`, which everything that uses the data reads), seeded subsets and the
template a request was made from."""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterable
from pathlib import Path

from safealign_lib import config
from safealign_lib.data.example import ChatExample
from safealign_lib.data.generator import CourseData
from safealign_lib.data.vocabulary import (
    FILLER_PREFIXES,
    FILLER_SUFFIXES,
    HELDOUT_TEMPLATES,
    TRAIN_TEMPLATES,
)


def write(data: CourseData, out_dir: str | os.PathLike) -> Path:
    """Write every split as JSON lines plus ``pretrain.txt`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, exs in data.splits.items():
        with open(out / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for e in exs:
                f.write(
                    json.dumps(
                        {
                            "user": e.user,
                            "response": e.response,
                            "system": e.system,
                            "meta": e.meta,
                        },
                        ensure_ascii=False,
                    )
                    + "\n"
                )
    (out / "pretrain.txt").write_text("\n\n".join(data.pretrain_text) + "\n", encoding="utf-8")
    return out


def default_data_dir() -> Path:
    """The course data folder (see :func:`safealign_lib.config.data_dir`)."""
    return config.data_dir()


def load_split(name: str, data_dir: str | os.PathLike | None = None) -> list[ChatExample]:
    """Read one split written by :func:`write` (``data/splits/<name>.jsonl``)."""
    base = Path(data_dir) if data_dir is not None else default_data_dir() / "splits"
    path = base / f"{name}.jsonl"
    if not path.is_file():
        have = sorted(p.stem for p in base.glob("*.jsonl")) if base.is_dir() else []
        raise FileNotFoundError(
            f"No split {name!r} at {path}. Available: {have or 'none'}; "
            "regenerate with `safealign data build`."
        )
    out = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
                out.append(
                    ChatExample(
                        user=r["user"],
                        response=r.get("response"),
                        system=r.get("system"),
                        meta=r.get("meta") or {},
                    )
                )
            except (json.JSONDecodeError, KeyError) as err:
                raise ValueError(f"{path}:{i}: not a valid example ({err}).") from err
    if not out:
        raise ValueError(f"Split {name!r} at {path} is empty.")
    return out


def subsample(examples: Iterable[ChatExample], n: int | None, seed: int = 0) -> list[ChatExample]:
    """A seeded random subset of ``n`` examples (all of them when n is None or too large)."""
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
        raise ValueError(f"n must be a non-negative number of examples or None, got {n!r}.")
    exs = list(examples)
    if n is None or n >= len(exs):
        return exs
    return random.Random(seed).sample(exs, n)


def template_of(user: str) -> str:
    """The request template a prompt was made from (``"?"`` when none matches), e.g. to break
    a refusal rate down by phrasing."""
    text = user
    for f in FILLER_PREFIXES:
        if text.startswith(f + " "):
            text = text[len(f) + 1 :]
    for tpl in TRAIN_TEMPLATES + HELDOUT_TEMPLATES:
        head, tail = tpl.split("{t}")
        if text.startswith(head) and (
            text.endswith(tail) or any(text.endswith(tail + " " + s) for s in FILLER_SUFFIXES)
        ):
            return tpl
    return "?"
