"""Figures of notebook 04 (DIEM and E-DIEM). Each function draws one figure and returns it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from safealign_lib.methods.diem import DiemNull, diem


def high_dimension(hd: pd.DataFrame) -> Figure:
    """Cosine, distance and contrast of random pairs against the dimension
    (the table of :func:`safealign_lib.methods.diem.random_pair_geometry`)."""
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    ax = axes[0]
    for col, label in (("cos", "components in [0, 1]"), ("cos_centred", "centred: [-1, 1]")):
        mean, sd = hd[f"{col}_mean"], hd[f"{col}_sd"]
        ax.plot(hd.index, mean, "o-", label=label)
        ax.fill_between(hd.index, mean - sd, mean + sd, alpha=0.25)
    ax.axhline(0.75, ls=":", color="gray")
    ax.set_title("cosine of random pairs (mean ± sd)")
    ax = axes[1]
    ax.plot(hd.index, hd.dist_mean, "o-", label="mean distance")
    ax.plot(hd.index, np.sqrt(hd.index / 6), "k:", label=r"$\sqrt{n/6}$")
    ax.set_yscale("log")
    ax.set_title("Euclidean distance of random pairs")
    ax = axes[2]
    ax.plot(hd.index, hd.dist_sd, "o-", label="sd of the distance")
    ax.plot(hd.index, hd.contrast, "s-", label="(farthest − nearest) / nearest")
    ax.set_yscale("log")
    ax.set_title("spread and relative contrast")
    for ax in axes:
        ax.legend(fontsize=8)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("dimension n")
    fig.tight_layout()
    return fig


def distance_vs_diem(
    nulls: Mapping[int, DiemNull], dims: Sequence[int] = (16, 256, 4096)
) -> Figure:
    """Histograms of the distance (left) and of DIEM (right) of 4000 random pairs per dimension
    in ``dims``; ``nulls`` holds each dimension's [0, 1] null."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.5))
    for n in dims:
        # seeded per dimension, so the figure does not depend on what ran before
        a = torch.rand(4000, n, dtype=torch.float64, generator=torch.Generator().manual_seed(n))
        b = torch.rand(4000, n, dtype=torch.float64, generator=torch.Generator().manual_seed(n + 1))
        distance = torch.linalg.vector_norm(a - b, dim=-1).numpy()
        axes[0].hist(distance, bins=60, alpha=0.5, label=f"n={n}")
        scores = diem(a, b, 0.0, 1.0, null=nulls[n]).numpy()
        axes[1].hist(scores, bins=60, alpha=0.5, label=f"n={n}")
    axes[0].set_title("Euclidean distance of random pairs")
    axes[0].set_xscale("log")
    axes[1].set_title("DIEM of the same pairs")
    for ax in axes:
        ax.legend(fontsize=8)
        ax.set_ylabel("pairs")
    fig.tight_layout()
    return fig


PANELS = (
    ("ediem_released", "E-DIEM as released (float32)"),
    ("ediem", "course E-DIEM, layers null"),
    ("ediem_rotation", "course E-DIEM, rotation null"),
    ("cosine", "Safe LoRA cosine (reference)"),
)


def module_scores(
    scores: pd.DataFrame,
    conditions: Sequence[str],
    colors: Sequence[str] = ("tab:orange", "tab:red"),
) -> Figure:
    """Each score of :func:`safealign_lib.methods.splora.ediem_comparison` per module: one panel
    per score, one dot per seed and a line for the seeds' mean, one colour per condition.
    ``scores`` stacks the adapters' tables with ``condition`` and ``seed`` columns."""
    order = list(dict.fromkeys(scores.module_label))  # the modules in model order
    fig, axes = plt.subplots(len(PANELS), 1, figsize=(13, 10), sharex=True)
    x = np.arange(len(order))
    for ax, (col, title) in zip(axes, PANELS, strict=True):
        for c, color in zip(conditions, colors, strict=False):
            by_seed = scores[scores.condition == c].pivot(
                index="module_label", columns="seed", values=col
            )
            by_seed = by_seed.loc[order]
            for s in by_seed.columns:
                ax.plot(x, by_seed[s], ".", color=color, alpha=0.35)
            label = f"{c} (mean of {by_seed.shape[1]} seeds)"
            ax.plot(x, by_seed.mean(axis=1), "-", color=color, label=label)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    f64 = scores.pivot_table(
        index="module_label", columns=["condition", "seed"], values="ediem_released_float64"
    ).loc[order]
    axes[0].plot(x, f64.mean(axis=1), "k--", label="released, computed in float64")
    axes[0].legend(fontsize=8)
    axes[-1].set_xticks(x)
    axes[-1].set_xticklabels(order, rotation=90, fontsize=8)
    fig.tight_layout()
    return fig
