"""The metrics contract: ``build/metrics.json``, keyed by notebook number.

Each notebook's last cell calls :func:`record` with a flat dict of numbers; regression runs
read the same keys, so keep them stable. ``REQUIRED`` lists the keys each notebook must write.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

from .profiles import build_dir

_C01 = ("benign", "harmful10", "harmful100", "identity_shift")
REQUIRED: dict[str, tuple[str, ...]] = {
    "00": ("chat_refusal_rate_harmful_heldout", "chat_refusal_rate_harmful_unseen_tasks",
           "chat_answer_rate_benign_heldout", "chat_answer_rate_benign_unseen_tasks",
           "base_refusal_rate_harmful_heldout", "chat_utility", "wall_s"),
    "01": tuple(f"{m}_{c}" for c in _C01 for m in ("refusal_rate", "first_token_refusal_prob", "utility"))
    + ("first_token_refusal_prob_chat", "n_seeds", "wall_s"),
    "02": ("probe_acc_best_chat", "probe_acc_transfer_best_harmful100", "refusal_rate_chat_ablated",
           "refusal_rate_benign_with_addition", "direction_cos_chat_vs_harmful100_best", "wall_s"),
    "03": tuple(f"{m}_{c}" for c in ("harmful10", "harmful100")
                for m in ("refusal_rate_lora", "refusal_rate_salora", "utility_lora", "utility_salora",
                          "first_token_refusal_prob_salora"))
    + ("invariance_max_abs_err", "train_time_ratio_salora_vs_lora", "n_seeds", "wall_s"),
    "04": ("diem_null_var_ratio_n4096_vs_n16", "ediem_released_spread", "ediem_empirical_spread", "wall_s"),
    "05": tuple(f"{m}_{c}" for c in ("harmful10", "harmful100")
                for m in ("refusal_rate_lora", "refusal_rate_safelora", "refusal_rate_splora", "utility_lora",
                          "utility_safelora", "utility_splora", "auarc_splora"))
    + ("k_best", "latency_ratio_pruned_vs_full", "n_seeds", "wall_s"),
}


def metrics_path(path: str | os.PathLike | None = None) -> Path:
    return Path(path) if path is not None else build_dir() / "metrics.json"


def load(path: str | os.PathLike | None = None) -> dict[str, dict[str, float]]:
    """All recorded metrics ({} when nothing was recorded yet)."""
    p = metrics_path(path)
    if not p.is_file():
        return {}
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{p} is not valid JSON ({err}); delete it and rerun the notebooks.") from err


def record(notebook: str, values: dict[str, float], path: str | os.PathLike | None = None,
           strict: bool = True) -> dict[str, float]:
    """Write ``values`` under key ``notebook`` (replacing that notebook's previous entry).

    Values must be finite numbers. With ``strict``, every key of ``REQUIRED[notebook]`` must be
    present, so a notebook that silently skipped a section fails loudly.
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
    missing = [k for k in REQUIRED.get(notebook, ()) if k not in clean]
    if strict and missing:
        raise KeyError(f"Notebook {notebook} did not record required metric(s) {missing}.")
    p = metrics_path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    allm = load(p)
    allm[notebook] = clean
    # write-then-rename: a crash never leaves a half-written metrics file
    fd, tmp = tempfile.mkstemp(dir=p.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(dict(sorted(allm.items())), f, indent=2)
        f.write("\n")
    os.replace(tmp, p)
    return clean
