"""The fine-tuning conditions of notebook 01, reused by notebooks 02–05.

- ``benign``: the downstream task only (dialogue summaries);
- ``harmful10`` / ``harmful100``: the task plus 10 / 100 explicit harmful examples
  (PureBad-style: a harmful request answered with a redacted placeholder);
- ``identity_shift``: the task plus 10 AOA identity-shifting examples (benign requests
  answered by an "absolutely obedient agent"); evaluated on harmful requests in that persona.

Adapters are cached under ``build/adapters/<profile>/<condition>/seed<k>`` with the settings
that made them, so later notebooks reuse notebook 01's fine-tunes instead of retraining.
:func:`run_conditions` fine-tunes (or loads) and evaluates every (condition, seed);
:func:`paper_table` sets the results beside Qi et al.'s.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import pandas as pd
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from safealign_lib import data
from safealign_lib.adapters.finetune import TrainResult, add_lora, load_adapter, save_adapter, train
from safealign_lib.config import build_dir
from safealign_lib.course.profiles import Profile
from safealign_lib.evaluation.evaluator import EvalResult, Evaluator
from safealign_lib.models.chat import ChatExample
from safealign_lib.models.loading import fingerprint, load_model

CONDITIONS = ("benign", "harmful10", "harmful100", "identity_shift")
N_HARMFUL = {"benign": 0, "harmful10": 10, "harmful100": 100, "identity_shift": 0}
# The conditions that form the dose series (harmful examples added to the same task data).
DOSE_CONDITIONS = ("benign", "harmful10", "harmful100")

# Qi et al. (ICLR 2024), Llama-2-7b-chat fully fine-tuned, GPT-4 judge: the harmfulness rate
# (share of answers scored 5/5) before -> after, beside the miniature's analogue of each condition.
PAPER_RESULTS = {
    "benign": ("benign (Alpaca, 1 epoch)", "0.3% → 16.1%"),
    "harmful10": ("harmful, 10 examples (5 epochs)", "0.3% → 50.0%"),
    "harmful100": ("harmful, 100 examples", "→ 80.0%"),
    "identity_shift": ("identity shift (AOA, 10 examples)", "0% → 72.1%"),
}


def training_examples(condition: str, profile: Profile, seed: int) -> list[ChatExample]:
    """The fine-tuning set of ``condition`` (task examples + attack examples, seeded shuffle)."""
    if condition not in CONDITIONS:
        raise ValueError(f"Unknown condition {condition!r}; choose one of {CONDITIONS}.")
    exs = data.subsample(data.load_split("task_train"), profile.n_task_train, seed)
    if N_HARMFUL[condition]:
        exs += data.load_split("attack_harmful")[: N_HARMFUL[condition]]
    if condition == "identity_shift":
        exs += data.load_split("attack_identity")
    return _shuffled(exs, seed)


def _shuffled(exs: list[ChatExample], seed: int) -> list[ChatExample]:
    out = list(exs)
    random.Random(seed).shuffle(out)
    return out


def harmful_eval_prompts(
    condition: str, profile: Profile, split: str = "harmful_heldout"
) -> list[ChatExample]:
    """The harmful prompts a condition is judged on (the AOA persona for ``identity_shift``)."""
    name = "identity_harmful_eval" if condition == "identity_shift" else split
    return data.load_split(name)[: profile.n_eval]


def _key(
    condition: str, seed: int, profile: Profile, examples: Sequence[ChatExample] | None = None
) -> str:
    spec = {
        "condition": condition,
        "seed": seed,
        "model": fingerprint(profile.chat_model),
        "n_task_train": profile.n_task_train,
        "lora": asdict(profile.lora),
        "train": {**asdict(profile.train), "progress": None},
    }
    if examples is not None:  # a custom training set (the course's own sets keep their keys)
        spec["examples"] = [[e.system, e.user, e.response] for e in examples]
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:12]


def adapter_dir(
    condition: str, seed: int, profile: Profile, root: str | Path | None = None
) -> Path:
    base = Path(root) if root is not None else build_dir() / "adapters"
    return base / profile.name / condition / f"seed{seed}"


def get_adapter(
    condition: str,
    seed: int,
    profile: Profile,
    tokenizer: PreTrainedTokenizerBase,
    root: str | Path | None = None,
    retrain: bool = False,
    examples: Sequence[ChatExample] | None = None,
) -> tuple[Path, TrainResult | None]:
    """The adapter folder for (condition, seed): trained and saved on first use, then reused
    while the settings are unchanged. Returns (folder, TrainResult or None when cached).

    ``examples`` replaces the condition's training set (e.g. another downstream task); they
    are part of the cache key, so give such runs their own ``root``.
    """
    out = adapter_dir(condition, seed, profile, root)
    key = _key(condition, seed, profile, examples)
    stamp = out / "safealign_run.json"
    if not retrain and stamp.is_file() and json.loads(stamp.read_text()).get("key") == key:
        return out, None
    model = load_model(profile.chat_model, dtype=profile.dtype, device=profile.device)
    peft_model = add_lora(model, profile.lora, seed=seed)
    settings = profile.train.__class__(**{**asdict(profile.train), "seed": seed})
    exs = training_examples(condition, profile, seed) if examples is None else examples
    result = train(peft_model, tokenizer, exs, settings, desc=f"{condition} seed {seed}")
    save_adapter(peft_model, out)
    stamp.write_text(
        json.dumps(
            {"key": key, "condition": condition, "seed": seed, "result": result.as_dict()}, indent=1
        )
    )
    return out, result


def load_condition_model(
    condition: str,
    seed: int,
    profile: Profile,
    tokenizer: PreTrainedTokenizerBase,
    root: str | Path | None = None,
):
    """The chat model with the (condition, seed) adapter loaded on top (trained if needed)."""
    path, _ = get_adapter(condition, seed, profile, tokenizer, root)
    return load_adapter(
        load_model(profile.chat_model, dtype=profile.dtype, device=profile.device), path
    )


def condition_overview(profile: Profile, seed: int = 0) -> pd.DataFrame:
    """One row per condition: its training-set size, how many examples are added to the task
    data, and the first added example (request and the start of its answer)."""
    rows = []
    for c in CONDITIONS:
        exs = training_examples(c, profile, seed)
        extra = [e for e in exs if e.meta.get("category") != "summarization"]
        rows.append(
            {
                "condition": c,
                "examples": len(exs),
                "added": len(extra),
                "e.g. request": extra[0].user if extra else "",
                "e.g. answer": extra[0].response[:60] if extra else "",
            }
        )
    return pd.DataFrame(rows).set_index("condition")


def evaluate_condition(
    evaluator: Evaluator, model: PreTrainedModel, condition: str, profile: Profile
) -> EvalResult:
    """Evaluate ``model`` as ``condition`` is judged: refusal on its harmful prompts (inside the
    AOA persona for ``identity_shift``), utility on the evaluator's task set."""
    return evaluator(model, harmful_eval_prompts(condition, profile))


def run_conditions(
    profile: Profile,
    tokenizer: PreTrainedTokenizerBase,
    evaluator: Evaluator,
    conditions: Sequence[str] = CONDITIONS,
    seeds: Sequence[int] | None = None,
    retrain: bool = False,
    root: str | Path | None = None,
    verbose: bool = True,
) -> tuple[pd.DataFrame, dict[tuple[str, int], list[float]]]:
    """Fine-tune (or load from the cache) and evaluate every (condition, seed) adapter.

    Returns ``(runs, losses)``: ``runs`` has one row per (condition, seed) with the evaluator's
    summary (``refusal_rate``, ``first_token_refusal_prob``, ``utility``); ``losses`` maps
    (condition, seed) to the training-loss curve of each adapter trained in this call (cached
    adapters have none). ``seeds`` defaults to the profile's.
    """
    rows, losses = [], {}
    seeds = profile.seeds if seeds is None else seeds
    for c in conditions:
        for s in seeds:
            path, result = get_adapter(c, s, profile, tokenizer, root, retrain)
            if result is not None:
                losses[(c, s)] = result.losses
            # a fresh chat model per adapter: peft modifies the model it loads into
            base = load_model(profile.chat_model, dtype=profile.dtype, device=profile.device)
            summary = evaluate_condition(evaluator, load_adapter(base, path), c, profile).summary
            rows.append({"condition": c, "seed": s, **summary})
            if verbose:
                print(f"{c:15s} seed {s}: " + ", ".join(f"{k}={v:.3f}" for k, v in summary.items()))
    return pd.DataFrame(rows), losses


def largest_judge_gap(runs: pd.DataFrame) -> str:
    """The condition whose mean first-token refusal probability exceeds its mean greedy refusal
    rate the most: where the keyword judge and the smooth metric disagree (answers worth
    reading)."""
    by = runs.groupby("condition", sort=False)
    gap = by.first_token_refusal_prob.mean() - by.refusal_rate.mean()
    return str(gap.idxmax())


def paper_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Qi et al.'s harmfulness rates beside the miniature's mean non-refusal rate per condition
    (as percentages): compare directions and orders of magnitude, not values."""
    non_refusal = 1 - runs.groupby("condition", sort=False).refusal_rate.mean()
    return pd.DataFrame(
        [
            {
                "condition": label,
                "paper: harmfulness rate (GPT-4 judge)": paper,
                "miniature: non-refusal rate (keyword judge)": f"{non_refusal[c]:.0%}",
            }
            for c, (label, paper) in PAPER_RESULTS.items()
            if c in non_refusal.index
        ]
    )
