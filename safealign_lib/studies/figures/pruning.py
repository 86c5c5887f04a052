"""Figures and display tables of notebook 05 (Safe LoRA and SPLoRA). Each figure function
draws one figure and returns it; the table functions return what the notebook shows."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure

from safealign_lib.course.plots import annotated_heatmap
from safealign_lib.evaluation.tables import seed_table
from safealign_lib.studies.repair import block_module_grid

COLORS = {
    ("Safe LoRA", "harmful10"): "tab:cyan",
    ("Safe LoRA", "harmful100"): "tab:blue",
    ("SPLoRA", "harmful10"): "tab:orange",
    ("SPLoRA", "harmful100"): "tab:red",
}
CURVES = ("refusal_rate", "utility", "auarc")


def sweep_curves(
    curves: pd.DataFrame, chat: Mapping[str, float], k_grid: Sequence[int], n_modules: int
) -> Figure:
    """Validation refusal, utility and AUARC against k (mean ± sd over seeds, k evenly spaced)
    per method and condition, the chat model as a dotted line, and the refusal-utility
    trade-off labelled by k. ``curves``: the table of
    :func:`~safealign_lib.studies.repair.with_lora_baseline`."""
    xpos = {k: i for i, k in enumerate([0, *k_grid])}
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    for (m, c), color in COLORS.items():
        g = curves[(curves.method == m) & (curves.condition == c)].groupby("k")
        for ax, col in zip(axes, CURVES, strict=False):
            mean = g[col].mean()
            ax.errorbar(
                mean.index.map(xpos),
                mean,
                yerr=g[col].std(),
                fmt="o-",
                ms=4,
                capsize=2,
                color=color,
                label=f"{m}, {c}",
            )
        utility, refusal = g.utility.mean(), g.refusal_rate.mean()
        axes[3].plot(utility, refusal, "o-", color=color)
        for k, u, r in zip(utility.index, utility, refusal, strict=True):
            axes[3].annotate(str(k), (u, r), fontsize=7, xytext=(3, 3), textcoords="offset points")
    for ax, col in zip(axes, CURVES, strict=False):
        ax.axhline(chat[col], ls=":", color="gray", label=f"chat = all {n_modules} pruned")
        ax.set_xticks(list(xpos.values()), [str(k) for k in xpos])
        ax.set_xlabel("k (modules projected / pruned)")
        ax.set_title(f"{col} (validation)")
        ax.set_ylim(-0.03, 1.03)
    axes[3].set_xlabel("utility (validation)")
    axes[3].set_ylabel("refusal rate (validation)")
    axes[3].set_title("trade-off: labels are k")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    return fig


def chosen_k_table(
    test: pd.DataFrame,
    chat: Mapping[str, float],
    k_best: Mapping[str, int],
    n_modules: int,
    columns: Sequence[str] = ("refusal_rate", "first_token_refusal_prob", "utility", "auarc"),
) -> pd.DataFrame:
    """Test numbers as mean ± sd over seeds per condition and method, with each method's k,
    and the chat model (every module pruned) as a last row."""
    label = "chat model (all modules pruned)"
    table = seed_table(test, ["condition", "method"], columns, reference={label: chat})
    ks = [k_best.get(m, 0) for _, m in table.index[:-1]] + [n_modules]
    table.insert(0, "k", ks)
    return table


def risk_coverage(
    rc_mean: pd.DataFrame,
    conditions: Sequence[str],
    methods: Sequence[str],
    k_best: Mapping[str, int],
) -> Figure:
    """Mean ROUGE-L of the answers kept against the fraction of most uncertain answers dropped,
    one panel per condition (``rc_mean``: rows (condition, method), columns the fractions)."""
    fig, axes = plt.subplots(1, len(conditions), figsize=(10, 3.3), sharey=True, squeeze=False)
    axes = axes[0]
    for ax, c in zip(axes, conditions, strict=True):
        for m, style in zip(("LoRA", *methods), ("o-", "s--", "^-"), strict=False):
            ax.plot(
                rc_mean.columns, rc_mean.loc[(c, m)], style, label=f"{m} (k={k_best.get(m, 0)})"
            )
        ax.set_title(f"{c}: risk–coverage (test)")
        ax.set_xlabel("fraction of most uncertain answers dropped")
    axes[0].set_ylabel("mean ROUGE-L of the rest")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def priority_heatmaps(prio: Mapping[str, pd.DataFrame], oracle: pd.DataFrame) -> Figure:
    """Per condition (one row of panels): each method's mean priority (1 = acted on first) and
    the oracle's safety effect, on the block x module grid. ``prio`` maps a condition to
    :func:`~safealign_lib.studies.repair.priorities`; ``oracle`` is indexed by
    (condition, module)."""
    fig, axes = plt.subplots(
        len(prio), 3, figsize=(13, 7), gridspec_kw={"wspace": 0.35}, squeeze=False
    )
    for row, (c, p) in zip(axes, prio.items(), strict=True):
        panels = [
            (
                p["Safe LoRA priority"],
                "Safe LoRA priority (low cosine first)",
                "viridis_r",
                "{:.0f}",
            ),
            (p["SPLoRA priority"], "SPLoRA priority (high E-DIEM first)", "viridis_r", "{:.0f}"),
            (
                oracle.loc[c].safety_effect,
                "oracle: refusal-prob rise when removed alone",
                "magma",
                "{:.2f}",
            ),
        ]
        for ax, (series, title, cmap, fmt) in zip(row, panels, strict=True):
            grid = block_module_grid(series)
            grid.index = [f"block {b}" for b in grid.index]
            im = annotated_heatmap(ax, grid, cmap=cmap, fmt=fmt, fontsize=7)
            ax.set_title(f"{c}: {title}", fontsize=9)
            fig.colorbar(im, ax=ax, fraction=0.046)
    return fig


def paper_table(
    test_means: pd.DataFrame,
    rc_all: pd.DataFrame,
    latency_ratio: float,
    k_best: Mapping[str, int],
    n_modules: int,
    methods: Sequence[str] = ("Safe LoRA", "SPLoRA"),
) -> pd.DataFrame:
    """The papers' claims beside the miniature's test numbers (means over seeds).

    ``test_means``: refusal_rate and utility per (condition, method); ``rc_all``: mean utility
    per method (rows) and dropped fraction (columns)."""

    def trio(col: str, c: str) -> str:
        return " / ".join(f"{test_means.loc[(c, m), col]:.2f}" for m in ("LoRA", *methods))

    def rc3(m: str) -> str:
        return "/".join(f"{rc_all.loc[m, x]:.3f}" for x in (0.0, 0.4, 0.8))

    safest = "SPLoRA safest, then Safe LoRA (abstract; no number verified)"
    keeps = "SPLoRA keeps or improves LoRA's utility"
    k_text = f"{k_best['Safe LoRA']} / {k_best['SPLoRA']} of {n_modules} (validation)"
    rows = [
        (
            "refusal, harmful10 (LoRA / Safe LoRA / SPLoRA)",
            safest,
            trio("refusal_rate", "harmful10"),
        ),
        ("refusal, harmful100", safest, trio("refusal_rate", "harmful100")),
        ("utility, harmful10 (ROUGE-L)", keeps, trio("utility", "harmful10")),
        ("utility, harmful100 (ROUGE-L)", keeps, trio("utility", "harmful100")),
        (
            "risk–coverage at 0/40/80 % rejected: LoRA",
            ".243/.268/.275 (ROUGE-1, Alpaca)",
            rc3("LoRA"),
        ),
        ("risk–coverage: Safe LoRA", ".241/.283/.320", rc3("Safe LoRA")),
        ("risk–coverage: SPLoRA", ".252/.295/.344", rc3("SPLoRA")),
        (
            "inference time, pruned vs full adapter",
            "lower (no number verified)",
            f"{latency_ratio:.2f} at k={k_best['SPLoRA']}",
        ),
        ("k chosen (Safe LoRA / SPLoRA)", "fixed by the authors", k_text),
    ]
    columns = ["quantity", "paper", "miniature (test, mean over seeds)"]
    return pd.DataFrame(rows, columns=columns).set_index("quantity")
