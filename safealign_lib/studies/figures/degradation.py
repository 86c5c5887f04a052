"""Figures of notebook 01 (LoRA breaks safety): training-loss curves and the dose–response."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure

from safealign_lib.studies.conditions import DOSE_CONDITIONS, INSTRUCT_CONDITIONS, N_HARMFUL

METRICS = ("refusal_rate", "harmful_rate", "first_token_refusal_prob", "utility")


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
    conditions = list(dict.fromkeys(c for c, _ in losses))
    colors = dict(zip(conditions, plt.get_cmap("tab10").colors, strict=False))
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    for c in conditions:
        curves = [pd.Series(v) for (cc, _), v in losses.items() if cc == c]
        smooth = [x.rolling(window, min_periods=1).mean() for x in curves]
        for x in smooth:  # every seed, thin; the mean over seeds, thick
            ax.plot(x, color=colors[c], alpha=0.25, lw=0.8)
        mean = pd.concat(smooth, axis=1).mean(axis=1)
        n = len(curves)
        ax.plot(mean, color=colors[c], lw=2, label=f"{c} ({n} seed{'s' * (n != 1)})")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (smoothed)")
    ax.set_title("Training loss per condition: mean over seeds (thick), each seed (thin)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return fig


# The two dose series: harmful examples added to dialogue summaries, or to instruction data.
SERIES = {
    "summary data": (DOSE_CONDITIONS, "tab:red"),
    "instruction data": (INSTRUCT_CONDITIONS, "tab:purple"),
}


def dose_response(
    runs: pd.DataFrame,
    before: Mapping[str, float],
    metrics: Sequence[str] = METRICS,
    series: Mapping[str, tuple[Sequence[str], str]] = SERIES,
) -> Figure:
    """Each metric against the number of harmful examples in the fine-tuning data, one line per
    series of conditions (summary data; instruction data): one dot per seed, the mean over seeds
    as a line, and the chat model before fine-tuning as a dashed line. ``before`` maps metric ->
    value, or series label -> (metric -> value) where the chat model's reference differs per
    series: utility is each series' own task (ROUGE-L on summaries or on house-format answers),
    so each series gets its own dashed line, in its colour, where the references differ."""
    per_series = bool(before) and all(isinstance(v, Mapping) for v in before.values())
    metrics = [m for m in metrics if m in runs]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.4 * len(metrics), 3.5), squeeze=False)
    ticks: set[int] = set()
    for label, (conditions, color) in series.items():
        dose = {c: N_HARMFUL[c] for c in conditions}
        sub = runs[runs.condition.isin(dose)]
        if sub.empty:
            continue
        x = sub.condition.map(dose)
        ticks |= set(dose.values())
        for ax, m in zip(axes[0], metrics, strict=True):
            ax.scatter(x, sub[m], alpha=0.4, color=color, s=12)
            means = sub.groupby(x)[m].mean()
            ax.plot(means.index, means.values, "o-", color=color, label=label)
    for ax, m in zip(axes[0], metrics, strict=True):
        refs = (
            {label: b[m] for label, b in before.items() if m in b}
            if per_series
            else ({"": before[m]} if m in before else {})
        )
        if len(set(refs.values())) == 1:
            ax.axhline(next(iter(refs.values())), ls="--", color="tab:blue", label="chat before")
        else:
            for label, value in refs.items():
                color = series[label][1]
                ax.axhline(value, ls="--", color=color, label=f"chat before ({label})")
        # symlog keeps the 0-example condition on an axis that is logarithmic above 10
        ax.set_xscale("symlog", linthresh=10)
        ax.set_xticks(sorted(ticks), [str(t) for t in sorted(ticks)])
        ax.set_xlabel("harmful examples in the fine-tuning data")
        ax.set_title(m)
        ax.set_ylim(-0.05, 1.05)
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    return fig
