"""Seed tables: results over several seeds as mean ± sd, and paired differences.

Greedy refusal flips from seed to seed, so every comparison in the course is reported as the
mean and the sample standard deviation over seeds, and method comparisons as paired per-seed
differences.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd


def fmt_mean_sd(mean: float, sd: float, digits: int = 2) -> str:
    """'0.42 ± 0.05' (sd shown as 0 for a single seed)."""
    sd = 0.0 if sd != sd else sd  # NaN for one seed
    return f"{mean:.{digits}f} ± {sd:.{digits}f}"


def seed_stats(runs: pd.DataFrame, by: str | Sequence[str], metrics: Sequence[str]) -> pd.DataFrame:
    """Mean and sample sd of ``metrics`` per group (columns ``(metric, "mean"|"std")``), groups
    in order of first appearance."""
    return runs.groupby(by, sort=False)[list(metrics)].agg(["mean", "std"])


def seed_table(
    runs: pd.DataFrame,
    by: str | Sequence[str],
    metrics: Sequence[str],
    digits: int = 2,
    reference: Mapping[str, Mapping[str, float]] | None = None,
) -> pd.DataFrame:
    """A display table of 'mean ± sd' strings per group; ``reference`` adds rows of single
    values (e.g. ``{"chat (before)": {"refusal_rate": 1.0, ...}}``)."""
    agg = seed_stats(runs, by, metrics)
    table = pd.DataFrame(
        {
            m: [
                fmt_mean_sd(agg.loc[i, (m, "mean")], agg.loc[i, (m, "std")], digits)
                for i in agg.index
            ]
            for m in metrics
        },
        index=agg.index,
    )
    for label, values in (reference or {}).items():
        key = label if table.index.nlevels == 1 else ("—", label)
        table.loc[key, :] = [f"{values[m]:.{digits}f}" for m in metrics]
    return table


def paired_differences(
    runs: pd.DataFrame,
    method_col: str,
    treated: str,
    control: str,
    metrics: Sequence[str],
    by: Sequence[str] = ("condition",),
    seed_col: str = "seed",
) -> pd.DataFrame:
    """Per group and metric: mean, sd and standard error of ``treated − control`` paired by seed."""
    wide = runs.pivot_table(index=[*by, seed_col], columns=method_col, values=list(metrics))
    rows = []
    for group, sub in wide.groupby(level=list(range(len(by))), sort=False):
        for m in metrics:
            d = (sub[(m, treated)] - sub[(m, control)]).to_numpy()
            sd = float(np.std(d, ddof=1)) if len(d) > 1 else float("nan")
            rows.append(
                {
                    **dict(zip(by, group if isinstance(group, tuple) else (group,), strict=True)),
                    "metric": m,
                    "mean": float(d.mean()),
                    "sd": sd,
                    "se": sd / np.sqrt(len(d)) if len(d) > 1 else float("nan"),
                    "n": len(d),
                }
            )
    return pd.DataFrame(rows)
