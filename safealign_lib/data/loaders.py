"""Readers for the public data formats a GPU-runtime user brings (never shipped here).

Each returns a list of :class:`~safealign_lib.models.chat.ChatExample` so that the rest of the
library treats them like the course's own splits. A missing file or column is reported by
name, with what the format expects.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable
from pathlib import Path

from safealign_lib.data.example import ChatExample

# HEx-PHI's eleven categories, in file order (category_1.csv ... category_11.csv)
HEX_PHI_CATEGORIES = (
    "illegal_activity",
    "child_abuse_content",
    "hate_harass_violence",
    "malware",
    "physical_harm",
    "economic_harm",
    "fraud_deception",
    "adult_content",
    "political_campaigning",
    "privacy_violation",
    "tailored_financial_advice",
)


def _require_file(path: str | os.PathLike, what: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(
            f"{what} file not found: {p}. Download it yourself (licence terms apply) "
            "and pass its path."
        )
    return p


def _require_columns(have: Iterable[str], need: Iterable[str], path: Path, fmt: str) -> None:
    have = list(have)
    missing = [c for c in need if c not in have]
    if missing:
        raise ValueError(
            f"{path}: missing column(s) {missing} for the {fmt} format (found {have})."
        )


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{path} is not UTF-8 text ({err}); re-save it with UTF-8 encoding."
        ) from err


def _check_records(
    rows: list, need: Iterable[str], path: Path, fmt: str, may_be_empty: Iterable[str] = ()
) -> list[dict]:
    """Every record is an object whose fields ``need`` hold non-empty strings (``may_be_empty``:
    present, possibly empty); errors name the file, the record (1-based) and the field."""
    need, may_be_empty = list(need), set(may_be_empty)
    for i, r in enumerate(rows, 1):
        if not isinstance(r, dict):
            raise ValueError(
                f"{path}: record {i} is a {type(r).__name__}, not an object with fields "
                f"{need} ({fmt} format)."
            )
        for field in need:
            value = r.get(field)
            if field == "is_safe" and value is not None:
                continue
            if field in may_be_empty and isinstance(value, str):
                continue
            if not isinstance(value, str) or not value.strip():
                raise ValueError(
                    f"{path}: record {i} has no text in field {field!r} ({fmt} format needs "
                    f"{need}); fix or remove that record."
                )
    return rows


def _read_csv(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(_read_text(path).splitlines()))


def load_advbench(path: str | os.PathLike) -> list[ChatExample]:
    """AdvBench ``harmful_behaviors.csv`` (columns ``goal,target``): harmful requests."""
    p = _require_file(path, "AdvBench")
    reader = csv.DictReader(_read_text(p).splitlines())
    _require_columns(reader.fieldnames or [], ("goal", "target"), p, "AdvBench (goal,target)")
    rows = _check_records(list(reader), ("goal", "target"), p, "AdvBench (goal,target)")
    if not rows:
        raise ValueError(f"{p} has a header but no rows.")
    return [
        ChatExample(
            user=r["goal"], meta={"harmful": True, "source": "advbench", "target": r["target"]}
        )
        for r in rows
    ]


def load_hex_phi(
    folder: str | os.PathLike, categories: Iterable[int] | None = None
) -> list[ChatExample]:
    """HEx-PHI: ``category_1.csv`` … ``category_11.csv`` in ``folder``, one prompt per line,
    no header. ``categories`` picks some (1-based)."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(
            f"HEx-PHI folder not found: {root} (expected category_1.csv … category_11.csv)."
        )
    out = []
    for k in categories or range(1, 12):
        if not 1 <= k <= 11:
            raise ValueError(f"HEx-PHI has categories 1–11, not {k}.")
        p = _require_file(root / f"category_{k}.csv", f"HEx-PHI category {k}")
        meta = {"harmful": True, "source": "hex-phi", "category": HEX_PHI_CATEGORIES[k - 1]}
        for row in csv.reader(_read_text(p).splitlines()):  # one prompt per line
            if row and row[0].strip():
                out.append(ChatExample(user=row[0].strip(), meta=dict(meta)))
    if not out:
        raise ValueError(f"No prompts found in {root}.")
    return out


def load_alpaca(path: str | os.PathLike, limit: int | None = None) -> list[ChatExample]:
    """Alpaca JSON: a list of ``{instruction, input, output}``; the input is appended to the
    instruction when present."""
    p = _require_file(path, "Alpaca")
    try:
        records = json.loads(_read_text(p))
    except json.JSONDecodeError as err:
        raise ValueError(f"{p} is not valid JSON ({err}); Alpaca is one JSON list.") from err
    if not isinstance(records, list) or not records:
        raise ValueError(f"{p}: expected a non-empty JSON list of records.")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of records or None, got {limit}.")
    fmt = "Alpaca (instruction,input,output)"
    _check_records(records[:limit], ("instruction", "input", "output"), p, fmt, ("input",))
    out = []
    for r in records[:limit]:
        user = r["instruction"] + (f"\n\n{r['input']}" if r.get("input") else "")
        out.append(
            ChatExample(
                user=user, response=r["output"], meta={"harmful": False, "source": "alpaca"}
            )
        )
    return out


def _read_records(p: Path) -> list:
    if p.suffix == ".csv":
        return _read_csv(p)
    text = _read_text(p)
    if p.suffix == ".jsonl":
        out = []
        for i, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(
                        f"{p}: line {i} is not valid JSON ({err}); JSON lines hold one object "
                        "per line."
                    ) from err
        return out
    try:
        records = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{p} is not valid JSON ({err}); use a JSON list, or .jsonl / .csv."
        ) from err
    if not isinstance(records, list):
        raise ValueError(f"{p}: expected a JSON list of records.")
    return records


_TRUE, _FALSE = ("true", "1", "yes", "safe"), ("false", "0", "no", "unsafe")


def _as_bool(value: object, path: Path, i: int, field: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(
        f"{path}: record {i} has {field}={value!r}; expected true/false (or 1/0, yes/no)."
    )


def load_beavertails(path: str | os.PathLike) -> list[ChatExample]:
    """BeaverTails (``prompt, response, is_safe``; JSON, JSON lines or CSV). ``meta['harmful']``
    is ``not is_safe``: the *pair* is unsafe."""
    p = _require_file(path, "BeaverTails")
    rows = _read_records(p)
    if not rows:
        raise ValueError(f"{p} has no records.")
    fmt = "BeaverTails (prompt,response,is_safe)"
    _check_records(rows, ("prompt", "response", "is_safe"), p, fmt)
    out = []
    for i, r in enumerate(rows, 1):
        safe = _as_bool(r["is_safe"], p, i, "is_safe")
        out.append(
            ChatExample(
                user=r["prompt"],
                response=r["response"],
                meta={"harmful": not safe, "source": "beavertails"},
            )
        )
    return out


def load_dialogsum(
    path: str | os.PathLike, instruction: str = "Summarize the following dialogue."
) -> list[ChatExample]:
    """DialogSum (``dialogue, summary``; CSV, JSON or JSON lines) as summarisation examples."""
    p = _require_file(path, "DialogSum")
    rows = _read_records(p)
    if not rows:
        raise ValueError(f"{p} has no records.")
    _check_records(rows, ("dialogue", "summary"), p, "DialogSum (dialogue,summary)")
    return [
        ChatExample(
            user=f"{instruction}\n{r['dialogue']}",
            response=r["summary"],
            meta={"harmful": False, "source": "dialogsum", "category": "summarization"},
        )
        for r in rows
    ]
