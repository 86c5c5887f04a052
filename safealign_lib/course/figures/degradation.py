"""Figures of notebook 01 (LoRA breaks safety): training-loss curves and the dose–response."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure

from safealign_lib.course.conditions import DOSE_CONDITIONS, N_HARMFUL

METRICS = ("refusal_rate", "first_token_refusal_prob", "utility")


def loss_curves(
    losses: Mapping[tuple[str, int], Sequence[float]], window: int = 5
) -> Figure | None:
    """Training loss per (condition, seed), smoothed by a rolling mean over ``window`` steps.

    Returns None, and says so, when there is nothing to draw (every adapter came from the cache).
    """
    if not losses:
        print(
            "All adapters came from the cache (build/adapters); pass retrain=True to train again."
        )
        return None
    fig, ax = plt.subplots(figsize=(6, 3))
    for (c, s), curve in losses.items():
        smooth = pd.Series(curve).rolling(window, min_periods=1).mean()
        ax.plot(smooth, label=f"{c} s{s}", alpha=0.7)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (smoothed)")
    ax.legend(fontsize=6, ncol=2)
    return fig


def dose_response(
    runs: pd.DataFrame,
    before: Mapping[str, float],
    metrics: Sequence[str] = METRICS,
    conditions: Sequence[str] = DOSE_CONDITIONS,
) -> Figure:
    """Each metric against the number of harmful examples in the fine-tuning data: one dot per
    seed, the mean over seeds as a line, and the chat model before fine-tuning as a dashed line
    (``before`` maps metric -> value)."""
    dose = {c: N_HARMFUL[c] for c in conditions}
    sub = runs[runs.condition.isin(dose)]
    x = sub.condition.map(dose)
    ticks = sorted(set(dose.values()))
    fig, axes = plt.subplots(1, len(metrics), figsize=(13, 3.5), squeeze=False)
    for ax, m in zip(axes[0], metrics, strict=True):
        ax.scatter(x, sub[m], alpha=0.5, color="gray", label="seeds")
        means = sub.groupby(x)[m].mean()
        ax.plot(means.index, means.values, "o-", color="tab:red", label="mean")
        ax.axhline(before[m], ls="--", color="tab:blue", label="chat before")
        # symlog keeps the 0-example condition on an axis that is logarithmic above 10
        ax.set_xscale("symlog", linthresh=10)
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.set_xlabel("harmful examples in the fine-tuning data")
        ax.set_title(m)
        ax.set_ylim(-0.05, 1.05)
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    return fig
