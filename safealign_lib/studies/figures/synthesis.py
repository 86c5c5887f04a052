"""Notebook 07's figure: every method judged on the testbed, on one harm–utility plane."""

from __future__ import annotations

import math
from collections.abc import Mapping

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from safealign_lib.studies.synthesis import TESTBED_METHODS

VERDICT_MARKERS = {1.0: ("o", "holds"), 0.0: ("s", "not shown"), -2.0: ("X", "worse")}


def testbed_map(
    metrics: Mapping[str, Mapping[str, float]], condition: str = "skill_mixed"
) -> Figure | None:
    """Each testbed method (notebooks 03, 05 and 06) at its mean utility and harmful rate (± sd
    over seeds) on ``condition``, marked by its verdict, with the chat model and plain LoRA as
    reference points. None, and says so, when no notebook recorded the condition."""
    points = []
    for method, (nb, slug, vkey, _) in TESTBED_METHODS.items():
        m = metrics.get(nb, {})
        if f"harmful_rate_{slug}_{condition}" not in m:
            continue
        points.append(
            (
                method,
                m[f"utility_{slug}_{condition}"],
                m[f"harmful_rate_{slug}_{condition}"],
                m.get(f"harmful_rate_{slug}_{condition}_sd", math.nan),
                m.get(vkey, math.nan),
            )
        )
    if not points:
        print(f"No testbed results for {condition!r} in these metrics (a hub profile?).")
        return None
    ref = next(metrics[nb] for nb, *_ in TESTBED_METHODS.values() if nb in metrics)
    fig, ax = plt.subplots(figsize=(8.5, 5.2))
    cmap = plt.get_cmap("tab20").colors
    for i, (method, u, h, sd, code) in enumerate(points):
        marker, word = VERDICT_MARKERS.get(code, ("d", "void"))
        ax.errorbar(
            u,
            h,
            yerr=None if math.isnan(sd) else sd,
            fmt=marker,
            ms=8,
            capsize=3,
            color=cmap[i % len(cmap)],
            label=f"{method}: {word}",
        )
    lora_u, lora_h = ref.get(f"utility_lora_{condition}"), ref.get(f"harmful_rate_lora_{condition}")
    if lora_u is not None and lora_h is not None:
        ax.plot(lora_u, lora_h, "s", color="black", ms=10, label="plain LoRA (reference)")
    chat_u = ref.get(f"utility_chat_{condition}")
    if chat_u is not None:
        ax.plot(
            chat_u, 0.0, "*", color="gold", mec="black", ms=16, label="chat model (no fine-tune)"
        )
    ax.set_xlabel("skill utility (test) →")
    ax.set_ylabel("harmful rate (exact judge, test) ↓")
    ax.set_title(f"Every method on the testbed ({condition}), marked by its verdict")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return fig
