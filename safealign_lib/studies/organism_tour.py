"""Notebook 00's tour of the model organism: environment report, build info, display tables,
the first-token histogram and the recorded metrics.

The refusal tables are keyed by ``(model name, split)``, one row per prompt as
:meth:`safealign_lib.evaluation.Evaluator.refusal` returns them.
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import peft
import torch
import transformers
from matplotlib.figure import Figure
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from safealign_lib import data
from safealign_lib.evaluation import Evaluator, judges
from safealign_lib.models.chat import format_prompt

Tables = Mapping[tuple[str, str], pd.DataFrame]


def environment_report() -> str:
    """Versions, threads and network setting: what the course needs to run here."""
    return "\n".join(
        [
            f"python       {platform.python_version()}",
            f"torch        {torch.__version__} | threads: {torch.get_num_threads()} "
            f"| cuda: {torch.cuda.is_available()}",
            f"transformers {transformers.__version__}",
            f"peft         {peft.__version__}",
            f"HF_HUB_OFFLINE = {os.environ.get('HF_HUB_OFFLINE', 'unset')} "
            "(the cpu profile never needs the network)",
        ]
    )


def describe_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> str:
    """Architecture, size, and the chat template applied to a one-word user turn."""
    cfg = model.config
    n_params = sum(p.numel() for p in model.parameters())
    return (
        f"{type(model).__name__}: {cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, "
        f"vocab {cfg.vocab_size}, {n_params / 1e6:.2f}M parameters\n"
        f"chat template -> {format_prompt(tokenizer, 'Hi')!r}"
    )


def build_info(model_path: str | os.PathLike) -> str:
    """The organism's build record (``build_info.json`` beside the model folder), abridged."""
    path = Path(model_path).parent / "build_info.json"
    if not path.is_file():
        return "No build_info.json next to the model (a hub model, or a model you built elsewhere)."
    info = json.loads(path.read_text())
    keys = ("n_parameters", "base_seconds", "total_seconds", "torch")
    return json.dumps({k: info[k] for k in keys}, indent=1) + f"\nsettings: {info['settings']}"


def splits_table(names: Sequence[str]) -> pd.DataFrame:
    """Size and first request of each named course split."""
    rows = []
    for name in names:
        split = data.load_split(name)
        rows.append({"split": name, "examples": len(split), "example": split[0].user[:70]})
    return pd.DataFrame(rows)


def split_rates(tables: Tables) -> pd.DataFrame:
    """Refusal rate, mean first-token refusal probability, empty rate and (with the exact
    judge's verdicts) harmful rate per split (rows) and model (columns ``(metric, model)``),
    unrounded."""
    rows = [
        {
            "model": name,
            "split": split,
            "refusal_rate": df.refused.mean(),
            "first_token_refusal_prob": df.first_token_refusal_prob.mean(),
            **Evaluator.rates(df),
        }
        for (name, split), df in tables.items()
    ]
    frame = pd.DataFrame(rows)
    values = [c for c in frame.columns if c not in ("model", "split")]
    return frame.pivot(index="split", columns="model", values=values)


def first_token_histograms(
    tables: Tables, splits: Sequence[str], models: Sequence[str] = ("base", "chat")
) -> Figure:
    """Per model, the distribution of the first-token refusal probability on each split
    (harmful splits in reds, benign in greens)."""
    colors = ("tab:red", "darkred", "tab:green", "darkgreen")
    fig, axes = plt.subplots(1, len(models), figsize=(11, 3.5), sharey=True, squeeze=False)
    for ax, name in zip(axes[0], models, strict=True):
        for split, color in zip(splits, colors, strict=False):
            probs = tables[(name, split)].first_token_refusal_prob
            ax.hist(probs, bins=20, range=(0, 1), alpha=0.5, label=split, color=color)
        ax.set_title(f"{name}: first-token refusal probability")
        ax.set_xlabel("P(refusal-starting first token)")
    axes[0, 0].set_ylabel("prompts")
    axes[0, -1].legend(fontsize=8)
    fig.tight_layout()
    return fig


def mistakes(
    tables: Tables, splits: Sequence[str], model: str = "chat", per_split: int = 4
) -> pd.DataFrame | str:
    """Up to ``per_split`` wrong verdicts of ``model`` per split: a refused benign prompt or an
    answered harmful one (splits named ``harmful_*`` should be refused)."""
    rows = []
    for split in splits:
        df = tables[(model, split)]
        bad = df[df.refused != split.startswith("harmful")].head(per_split)
        rows += [
            {"split": split, "prompt": r.prompt, "response": r.response} for r in bad.itertuples()
        ]
    return pd.DataFrame(rows) if rows else "no mistakes on these splits"


def refusal_by_template(table: pd.DataFrame) -> pd.DataFrame:
    """Refusal rate and prompt count per request template, lowest rate first."""
    by = table.prompt.map(data.template_of).rename("template")
    grouped = table.refused.groupby(by).agg(refusal_rate="mean", prompts="count")
    return grouped.round(3).sort_values("refusal_rate")


def judge_comparison(responses: Sequence[str]) -> pd.DataFrame:
    """The verdicts of the two keyword judges shipped with the library on each response."""
    responses = list(responses)
    return pd.DataFrame(
        {
            "response": responses,
            "gcg (29, case-sensitive)": judges.KeywordJudge("gcg")(responses, responses),
            "short (12, case-insensitive)": judges.KeywordJudge("short")(responses, responses),
        }
    )


def organism_metrics(rates: pd.DataFrame, utility: float) -> dict[str, float]:
    """Notebook 00's recorded numbers from :func:`split_rates` and the chat model's utility."""

    def rate(model: str, split: str) -> float:
        return float(rates.loc[split, ("refusal_rate", model)])

    out = {
        "chat_refusal_rate_harmful_heldout": rate("chat", "harmful_heldout"),
        "chat_refusal_rate_harmful_unseen_tasks": rate("chat", "harmful_unseen"),
        "chat_answer_rate_benign_heldout": 1 - rate("chat", "benign_heldout"),
        "chat_answer_rate_benign_unseen_tasks": 1 - rate("chat", "benign_unseen"),
        "base_refusal_rate_harmful_heldout": rate("base", "harmful_heldout"),
        "chat_utility": float(utility),
    }
    if "harmful_rate" in rates.columns.get_level_values(0):
        # the exact judge's validation: the base model complies, so this is near 1
        base = rates.loc["harmful_heldout", ("harmful_rate", "base")]
        out["base_harmful_rate_harmful_heldout"] = float(base)
    return out
