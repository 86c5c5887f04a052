"""Figures of notebook 03 (SaLoRA): the spectrum of W·X_h, LoRA vs SaLoRA results, the drift
of the layers' inputs, the r_s sweep, the training losses and the depth of each fine-tune's change
over the first answer tokens. Each draws and shows one figure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from safealign_lib.methods.salora import cumulative_energy
from safealign_lib.studies.salora_study import METRICS

METHOD_COLORS = {"LoRA": "tab:red", "SaLoRA": "tab:green"}
VARIANT_COLORS = {**METHOD_COLORS, "no task init": "tab:gray", "wrong-sign C": "tab:brown"}
METRIC_COLORS = dict(zip(METRICS, ("tab:green", "tab:olive", "tab:purple"), strict=True))


def spectrum(spectra: Mapping[str, torch.Tensor], r_s: int, energy: float) -> None:
    """σ_i / σ_1 and the cumulative share of ‖W·X_h‖² of every target layer, coloured by
    module type, with the chosen ``r_s`` (dashed) and the ``energy`` it had to keep (dotted)."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.6))
    modules = sorted({n.rsplit(".", 1)[-1] for n in spectra})
    colors = {m: f"C{i}" for i, m in enumerate(modules)}
    for n, S in spectra.items():
        mod = n.rsplit(".", 1)[-1]
        axes[0].semilogy((S / S[0]).numpy(), color=colors[mod], alpha=0.5, label=mod)
        axes[1].plot(cumulative_energy(S).numpy(), color=colors[mod], alpha=0.5, label=mod)
    for ax in axes:
        ax.axvline(r_s - 1, ls="--", color="k", lw=1)
        ax.set_xlabel("singular value index")
    handles = {label: h for h, label in zip(*axes[0].get_legend_handles_labels(), strict=True)}
    axes[0].legend(handles.values(), handles.keys(), fontsize=8)
    axes[0].set_title("σ_i / σ_1 of W·X_h (every target layer)")
    axes[1].axhline(energy, ls=":", color="gray")
    axes[1].set_title(f"share of ||W·X_h||² in the top i (dashed: r_s = {r_s})")
    fig.tight_layout()
    plt.show()


def results_bars(
    runs: pd.DataFrame,
    mean: pd.DataFrame,
    reference: Mapping[str, float] | Mapping[str, Mapping[str, float]],
) -> None:
    """Per metric: the mean of each method per condition (bars), every seed (dots) and the
    chat model before fine-tuning (dashed). ``reference`` maps metric -> value, or condition ->
    (metric -> value) where the chat model's reference differs per condition (utility is each
    condition's own task): then each condition's group of bars gets its own dashed segment."""
    conditions = list(dict.fromkeys(runs.condition))
    per_condition = all(isinstance(v, Mapping) for v in reference.values())
    fig, axes = plt.subplots(1, len(METRICS), figsize=(13, 3.4))
    for ax, m in zip(axes, METRICS, strict=True):
        for j, (method, color) in enumerate(METHOD_COLORS.items()):
            offset = (j - 0.5) * 0.3
            sub = runs[runs.method == method]
            heights = [mean.loc[(c, method), m] for c in conditions]
            x = np.arange(len(conditions)) + offset
            ax.bar(x, heights, 0.3, color=color, alpha=0.6, label=method)
            dots = [conditions.index(c) + offset for c in sub.condition]
            ax.scatter(dots, sub[m], color="k", s=10, zorder=3)
        if per_condition:
            for i, c in enumerate(conditions):
                label = "chat before" if i == 0 else None
                ax.hlines(
                    reference[c][m], i - 0.45, i + 0.45, ls="--", color="tab:blue", label=label
                )
        else:
            ax.axhline(reference[m], ls="--", color="tab:blue", label="chat before")
        ax.set_xticks(range(len(conditions)), conditions)
        ax.set_title(m)
        ax.set_ylim(0, 1.05)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    plt.show()


def drift(drift: pd.DataFrame, title: str) -> None:
    """Mean relative change of the target layers' inputs per decoder layer, per method."""
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for method, color in METHOD_COLORS.items():
        d = drift[drift.method == method].groupby("layer").drift.mean()
        ax.plot(d.index, d.values, "o-", color=color, label=method)
    ax.set_xlabel("decoder layer")
    ax.set_ylabel("relative change of the inputs")
    ax.legend()
    ax.set_title(title)
    fig.tight_layout()
    plt.show()


def r_s_sweep(ablations: pd.DataFrame, r_s: int, d_out: int, condition: str, seed: int) -> None:
    """SaLoRA's metrics against r_s (the ``SaLoRA`` rows of the ablation table), LoRA's as
    dotted lines, the chosen ``r_s`` dashed."""
    sweep = ablations[ablations.variant == "SaLoRA"].sort_values("r_s")
    lora = ablations[ablations.variant == "LoRA"].iloc[0]
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    for m, color in METRIC_COLORS.items():
        ax.plot(sweep.r_s, sweep[m], "o-", color=color, label=f"SaLoRA {m}")
        ax.axhline(lora[m], ls=":", color=color, label=f"LoRA {m}")
    ax.axvline(r_s, ls="--", color="k", lw=1)
    ax.set_xlabel(f"r_s (of d_out = {d_out})")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title(f"r_s sweep, {condition}, seed {seed} (dashed: chosen r_s)")
    fig.tight_layout()
    plt.show()


def loss_curves(curves: Mapping[str, Sequence[float]], title: str, window: int = 5) -> None:
    """Training losses, smoothed by a running mean over ``window`` steps."""
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    for label, losses in curves.items():
        smooth = pd.Series(losses).rolling(window, min_periods=1).mean()
        ax.plot(smooth, label=label, color=VARIANT_COLORS.get(label))
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (smoothed)")
    ax.legend(fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    plt.show()


def depth(depth: pd.DataFrame, title: str) -> None:
    """Per answer position: KL(chat ‖ model) (log scale) and the probability each model gives
    the chat model's own answer token, one line per model of ``depth``
    (:func:`~safealign_lib.studies.salora_study.depth_table`)."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.6))
    for i, (name, sub) in enumerate(depth.groupby("model", sort=False)):
        style = {"marker": "o", "color": VARIANT_COLORS.get(name, f"C{i + 2}"), "label": name}
        axes[0].semilogy(sub.position, sub.kl.clip(lower=1e-6), **style)
        axes[1].plot(sub.position, sub.token_prob_model, **style)
    axes[0].set_title("KL(chat ‖ fine-tune) per answer position")
    axes[1].set_title("probability of the chat model's own answer token")
    for ax in axes:
        ax.set_xlabel("answer position (0 = first answer token)")
    axes[1].set_ylim(0, 1.02)
    axes[1].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    plt.show()
