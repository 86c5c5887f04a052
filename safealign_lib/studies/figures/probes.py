"""Figures of notebook 02 (linear probes and the refusal direction)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from safealign_lib.course.plots import annotated_heatmap

COLORS = {
    "benign": "tab:green",
    "harmful10": "tab:orange",
    "harmful100": "tab:red",
    "identity_shift": "tab:purple",
}


def _class_hists(
    ax: plt.Axes, proj: np.ndarray, labels: np.ndarray, bins: np.ndarray, density: bool = False
) -> None:
    """Harmful (red) and benign (green) projections on one axis."""
    for cls, color, name in ((1, "tab:red", "harmful"), (0, "tab:green", "benign")):
        ax.hist(proj[labels == cls], bins=bins, alpha=0.6, color=color, label=name, density=density)


def projection_histogram(
    proj: np.ndarray, labels: np.ndarray, reference: float, layer: int
) -> plt.Figure:
    """Where the prompts sit along r̂: harmful vs benign projections, with 0 (what zero ablation
    sets) and the harmless mean ``reference`` (what affine ablation sets)."""
    fig, ax = plt.subplots(figsize=(7, 3))
    _class_hists(ax, proj, labels, np.linspace(proj.min() - 2, proj.max() + 2, 40))
    ax.axvline(0, color="k", ls=":", label="0 (zero ablation)")
    ax.axvline(reference, color="tab:blue", ls="--", label="harmless mean c (affine ablation)")
    ax.set_xlabel(f"projection onto r̂ (layer {layer})")
    ax.set_ylabel("prompts")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def probe_accuracy_by_layer(
    probe_chat: pd.DataFrame,
    transfer: pd.DataFrame,
    refit: pd.DataFrame,
    conditions: Sequence[str],
    refit_condition: str = "harmful100",
) -> plt.Figure:
    """SaLoRA's probing figure: per site, held-out accuracy per layer of the chat model's probes,
    of the same probes on each fine-tune (mean ± sd over seeds) and, dashed, of probes refitted
    on ``refit_condition`` (when it is among ``conditions``)."""
    sites = list(dict.fromkeys(probe_chat.site))
    fig, axes = plt.subplots(1, len(sites), figsize=(4.2 * len(sites), 3.4), sharey=True)
    axes = np.atleast_1d(axes)
    for ax, site in zip(axes, sites, strict=True):
        c = probe_chat[probe_chat.site == site]
        ax.plot(c.layer, c.acc_heldout, "k-o", label="chat (fitted here)")
        for cond in conditions:
            g = transfer[(transfer.site == site) & (transfer.condition == cond)]
            g = g.groupby("layer").accuracy
            ax.errorbar(
                g.mean().index,
                g.mean(),
                yerr=g.std().fillna(0),
                fmt="-o",
                ms=3,
                capsize=2,
                color=COLORS.get(cond),
                label=f"{cond}: chat probes",
            )
        if refit_condition in conditions:
            g = refit[(refit.site == site) & (refit.condition == refit_condition)]
            g = g.groupby("layer").acc_heldout.mean()
            label = f"{refit_condition}: refitted"
            ax.plot(g.index, g, "--", color=COLORS.get(refit_condition), label=label)
        ax.axhline(0.5, color="gray", lw=0.8, ls=":")
        ax.set_title(f"site: {site}")
        ax.set_xlabel("layer")
        ax.set_ylim(0.4, 1.02)
    axes[0].set_ylabel("held-out probe accuracy")
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=len(names), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


def projection_panels(
    projections: Mapping[str, Sequence[np.ndarray]],
    labels: np.ndarray,
    reference: float,
    layer: int,
) -> plt.Figure:
    """One panel per model (``{name: [projections of one seed, ...]}``, seeds pooled): density
    of harmful and benign test prompts along the chat model's r̂, the harmless mean dashed."""
    names = list(projections)
    fig, axes = plt.subplots(
        1, len(names), figsize=(3.4 * len(names), 2.9), sharex=True, sharey=True
    )
    axes = np.atleast_1d(axes)
    allp = np.concatenate([np.concatenate(v) for v in projections.values()])
    bins = np.linspace(allp.min() - 1, allp.max() + 1, 45)
    for ax, name in zip(axes, names, strict=True):
        runs = projections[name]
        _class_hists(ax, np.concatenate(runs), np.tile(labels, len(runs)), bins, density=True)
        ax.axvline(reference, color="tab:blue", ls="--", lw=1)
        ax.set_title(name + ("" if name == "chat" else f" ({len(runs)} seeds)"), fontsize=10)
        ax.set_xlabel(f"projection onto chat r̂, layer {layer}")
    axes[0].legend(fontsize=7)
    axes[0].set_ylabel("density")
    fig.tight_layout()
    return fig


def cosine_heatmap(cosines: pd.DataFrame, conditions: Sequence[str]) -> plt.Figure:
    """cos(r_chat, r_fine-tuned) per layer (rows) and fine-tune (columns), mean over seeds."""
    heat = cosines.groupby(["layer", "condition"]).cosine.mean().unstack()[list(conditions)]
    fig, ax = plt.subplots(figsize=(1.6 * len(conditions) + 2, 3.2))
    vmin = min(0.5, float(heat.min().min()))
    im = annotated_heatmap(ax, heat, cmap="viridis", vmin=vmin, vmax=1)
    ax.set_xlabel("fine-tune")
    ax.set_ylabel("layer")
    ax.set_title("cos(r_chat, r_fine-tuned)")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    return fig
