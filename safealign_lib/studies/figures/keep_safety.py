"""The figure of notebook 06 (what keeps safety): every method's harmful rate against its
utility on the testbed, with the reference points."""

from __future__ import annotations

from collections.abc import Mapping

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure

MARKERS = {
    "LoRA": ("s", "black"),
    "safety data": ("o", "tab:green"),
    "recovery": ("D", "tab:blue"),
    "constrained": ("^", "tab:purple"),
    "conditional steering": ("P", "tab:orange"),
    "steering always": ("X", "tab:red"),
    "oracle k": ("v", "tab:brown"),
    "random oracle k": ("v", "tab:gray"),
}


def harm_utility(table: pd.DataFrame, chat: Mapping[str, float], condition: str) -> Figure:
    """Harmful rate (exact judge, lower is safer) against the skill's utility, one point per
    method (mean ± sd over seeds), the chat model (no fine-tune) as a star. ``table``: one row
    per (method, condition, seed) with ``harmful_rate`` and ``utility``."""
    fig, ax = plt.subplots(figsize=(7.5, 5))
    rows = table[table.condition == condition]
    for method, (marker, color) in MARKERS.items():
        g = rows[rows.method == method]
        if g.empty:
            continue
        ax.errorbar(
            g.utility.mean(),
            g.harmful_rate.mean(),
            xerr=g.utility.std() if len(g) > 1 else None,
            yerr=g.harmful_rate.std() if len(g) > 1 else None,
            fmt=marker,
            color=color,
            ms=9,
            capsize=3,
            label=f"{method} (n={len(g)})",
        )
    ax.plot(
        chat["utility"],
        chat["harmful_rate"],
        "*",
        color="gold",
        mec="black",
        ms=16,
        label="chat model (no fine-tune)",
    )
    ax.set_xlabel("skill utility (steps' ROUGE-L, test) →")
    ax.set_ylabel("harmful rate (exact judge, test) ↓")
    ax.set_title(f"What keeps safety on the testbed ({condition}): mean ± sd over seeds")
    ax.set_ylim(-0.03, max(0.5, float(rows.harmful_rate.max()) + 0.1))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return fig
