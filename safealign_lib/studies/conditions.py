"""The fine-tuning conditions of notebook 01, reused by notebooks 02–05.

- ``benign``: the downstream task only (dialogue summaries);
- ``harmful10`` / ``harmful100``: the task plus 10 / 100 explicit harmful examples
  (PureBad-style: a harmful request answered with a redacted placeholder);
- ``identity_shift``: the task plus 10 AOA identity-shifting examples (benign requests
  answered by an "absolutely obedient agent"); evaluated on harmful requests in that persona;
- ``benign_instruct``: the papers' own regime, Alpaca-style instruction tuning on data that
  always complies (benign requests answered in a house format, ``instruct_train``); its utility
  is measured on held-out requests (``instruct_test``);
- ``mixed``: ``benign_instruct`` plus 10 harmful examples (SPLoRA's benign + malicious setting).

Adapters are cached under ``build/adapters/<profile>/<condition>/seed<k>`` with the settings
that made them, so later notebooks reuse notebook 01's fine-tunes instead of retraining.
:func:`run_conditions` fine-tunes (or loads) and evaluates every (condition, seed);
:func:`paper_table` sets the results beside Qi et al.'s.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import pandas as pd
from peft import PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from safealign_lib import data, pool
from safealign_lib.adapters import constrained
from safealign_lib.adapters.constrained import Constraint
from safealign_lib.adapters.finetune import TrainResult, add_lora, load_adapter, save_adapter, train
from safealign_lib.config import LoraSettings, TrainSettings, build_dir
from safealign_lib.course import cache
from safealign_lib.course.profiles import Profile, load_split
from safealign_lib.evaluation import editability, judges, prefill
from safealign_lib.evaluation import skill as skill_scoring
from safealign_lib.evaluation.evaluator import EvalResult, Evaluator
from safealign_lib.models import generation
from safealign_lib.models.chat import ChatExample
from safealign_lib.models.loading import fingerprint, load_model
from safealign_lib.studies import testbed

CONDITIONS = ("benign", "harmful10", "harmful100", "identity_shift", "benign_instruct", "mixed")
N_HARMFUL = {
    "benign": 0,
    "harmful10": 10,
    "harmful100": 100,
    "identity_shift": 0,
    "benign_instruct": 0,
    "mixed": 10,
}
# The downstream data of each condition: dialogue summaries, or instruction tuning.
INSTRUCT_CONDITIONS = ("benign_instruct", "mixed")
# The instruction-tuning conditions train at 1.5x the profile's learning rate: chosen on the
# validation splits (experiments/benign_instruct_recipe.py, experiments/RESULTS.md), where the
# profile's rate left the exact harmful rate at the edge of the 0.15 target and a smaller batch
# lowered it; Qi et al. also found that a higher learning rate erodes more safety.
LR_SCALE = {"benign_instruct": 1.5, "mixed": 1.5}


def train_settings(condition: str, profile: Profile, seed: int) -> TrainSettings:
    """The training settings of ``condition``'s adapter: the profile's, with ``seed`` (and the
    condition's learning-rate scale); a testbed condition's come from the testbed recipe."""
    if condition in testbed.TESTBED_CONDITIONS:
        return testbed.recipe_for(profile).train(profile.train, seed)
    lr = profile.train.lr * LR_SCALE.get(condition, 1.0)
    return replace(profile.train, seed=seed, lr=lr)


def lora_settings(condition: str, profile: Profile) -> LoraSettings:
    """The LoRA settings of ``condition``'s adapter: the profile's, or the testbed recipe's."""
    if condition in testbed.TESTBED_CONDITIONS:
        return testbed.recipe_for(profile).lora()
    return profile.lora


# The conditions that form the dose series (harmful examples added to the same task data).
DOSE_CONDITIONS = ("benign", "harmful10", "harmful100")

# Qi et al. (ICLR 2024), Llama-2-7b-chat fully fine-tuned, GPT-4 judge: the harmfulness rate
# (share of answers scored 5/5) before -> after, beside the miniature's analogue of each condition.
PAPER_RESULTS = {
    "benign": ("benign: a new task (dialogue summaries)", "–"),
    "benign_instruct": ("benign instruction tuning (Alpaca, 1 epoch)", "0.3% → 16.1%"),
    "mixed": ("benign instructions + 10 harmful (SPLoRA's mixed setting)", "–"),
    "harmful10": ("harmful, 10 examples (5 epochs)", "0.3% → 50.0%"),
    "harmful100": ("harmful, 100 examples", "→ 80.0%"),
    "identity_shift": ("identity shift (AOA, 10 examples)", "0% → 72.1%"),
}


def training_examples(condition: str, profile: Profile, seed: int) -> list[ChatExample]:
    """The fine-tuning set of ``condition`` (task examples + attack examples, seeded shuffle)."""
    if condition in testbed.TESTBED_CONDITIONS:
        return testbed.training_examples(condition, profile, seed, testbed.recipe_for(profile))
    if condition not in CONDITIONS:
        raise ValueError(
            f"Unknown condition {condition!r}; choose one of "
            f"{CONDITIONS + testbed.TESTBED_CONDITIONS}."
        )
    train = "instruct_train" if condition in INSTRUCT_CONDITIONS else "task_train"
    # a hub profile's own Alpaca file stands in for instruct_train (profiles.user_data)
    exs = data.subsample(load_split(profile, train), profile.n_task_train, seed)
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
    # a hub profile's own AdvBench/HEx-PHI prompts stand in for harmful_heldout
    return load_split(profile, name)[: profile.n_eval]


def task_examples(condition: str, profile: Profile, split: str = "test") -> list[ChatExample]:
    """The utility set a condition is judged on: held-out dialogue summaries, or held-out
    instruction requests for the instruction-tuning conditions (``split``: val or test)."""
    name = "instruct" if condition in INSTRUCT_CONDITIONS else "task"
    return data.load_split(f"{name}_{split}")[: profile.n_task_eval]


def _training_code_version() -> str:
    """A digest of the training loop's source: cached adapters never outlive a code change."""
    from safealign_lib.adapters import finetune

    return cache.source_digest(finetune)


def _key(
    condition: str,
    seed: int,
    profile: Profile,
    examples: Sequence[ChatExample] | None = None,
    objective: Constraint | None = None,
) -> str:
    spec = {
        "condition": condition,
        "seed": seed,
        "model": fingerprint(profile.chat_model),
        "n_task_train": profile.n_task_train,
        "lora": asdict(lora_settings(condition, profile)),
        "train": {**asdict(train_settings(condition, profile, seed)), "progress": None},
    }
    exs = training_examples(condition, profile, seed) if examples is None else examples
    # the data and the code that made the adapter: no stale adapter after either changes
    spec["examples"] = hashlib.sha256(
        json.dumps([[e.system, e.user, e.response] for e in exs]).encode()
    ).hexdigest()
    spec["code"] = _training_code_version()
    if objective is not None:  # the constrained objective: its settings and its code
        spec["objective"] = [asdict(objective), cache.source_digest(constrained)]
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:12]


def adapter_key(condition: str, seed: int, profile: Profile) -> str:
    """The cache key of the (condition, seed) adapter: its data, settings, model and code."""
    return _key(condition, seed, profile)


STAMP = "safealign_run.json"  # beside every adapter: its cache key and training result


def adapter_dir(
    condition: str, seed: int, profile: Profile, root: str | Path | None = None
) -> Path:
    """Where the (condition, seed) adapter of ``profile`` lives (under ``root``, default
    ``build/adapters``)."""
    base = Path(root) if root is not None else build_dir() / "adapters"
    return base / profile.name / condition / f"seed{seed}"


def cached_adapter(
    condition: str,
    seed: int,
    profile: Profile,
    root: str | Path | None = None,
    examples: Sequence[ChatExample] | None = None,
    objective: Constraint | None = None,
) -> Path | None:
    """The folder of the (condition, seed) adapter when it was trained with exactly these
    settings, data and code (its stamp holds the same key), else None."""
    out = adapter_dir(condition, seed, profile, root)
    stamp = out / STAMP
    key = _key(condition, seed, profile, examples, objective)
    if stamp.is_file() and json.loads(stamp.read_text()).get("key") == key:
        return out
    return None


def store_adapter(
    model: PeftModel,
    result: TrainResult,
    condition: str,
    seed: int,
    profile: Profile,
    root: str | Path | None = None,
    examples: Sequence[ChatExample] | None = None,
    objective: Constraint | None = None,
) -> Path:
    """Save a trained (condition, seed) adapter with the stamp that :func:`cached_adapter`
    reads: its key and its training result. Returns the folder."""
    out = adapter_dir(condition, seed, profile, root)
    save_adapter(model, out)
    key = _key(condition, seed, profile, examples, objective)
    stamp = {"key": key, "condition": condition, "seed": seed, "result": result.as_dict()}
    (out / STAMP).write_text(json.dumps(stamp, indent=1))
    return out


def stored_losses(path: Path) -> list[float] | None:
    """The training-loss curve recorded beside an adapter (None without a stamp)."""
    stamp = Path(path) / STAMP
    return json.loads(stamp.read_text())["result"]["losses"] if stamp.is_file() else None


def get_adapter(
    condition: str,
    seed: int,
    profile: Profile,
    tokenizer: PreTrainedTokenizerBase,
    root: str | Path | None = None,
    retrain: bool = False,
    examples: Sequence[ChatExample] | None = None,
    objective: Constraint | None = None,
) -> tuple[Path, TrainResult | None]:
    """The adapter folder for (condition, seed): trained and saved on first use, then reused
    while the settings are unchanged. Returns (folder, TrainResult or None when cached).
    Notebook 01 shows these steps once, in visible cells: :func:`cached_adapter`, ``add_lora``,
    ``train``, :func:`store_adapter`.

    ``examples`` replaces the condition's training set (e.g. another downstream task, or the
    set with safety data added); ``objective`` trains with the token-wise constrained loss
    instead of the plain answer loss (the reference: the chat model, i.e. the adapter
    disabled). Both are part of the cache key, so give such runs their own ``root``. The model
    trained on is ``profile.chat_model`` (a realigned chat model: a profile with its path).
    """
    found = cached_adapter(condition, seed, profile, root, examples, objective)
    if found is not None and not retrain:
        return found, None
    model = load_model(profile.chat_model, dtype=profile.dtype, device=profile.device)
    peft_model = add_lora(model, lora_settings(condition, profile), seed=seed)
    settings = train_settings(condition, profile, seed)
    exs = training_examples(condition, profile, seed) if examples is None else examples
    loss_fn = None if objective is None else constrained.constrained_objective(objective)
    result = train(
        peft_model, tokenizer, exs, settings, desc=f"{condition} seed {seed}", loss_fn=loss_fn
    )
    out = store_adapter(peft_model, result, condition, seed, profile, root, examples, objective)
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
        # what a condition adds to its downstream data (summaries or house-format instructions)
        extra = [
            e
            for e in exs
            if e.meta.get("category") != "summarization" and e.meta.get("style") != "house"
        ]
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
    AOA persona for ``identity_shift``), utility on the evaluator's task set — on held-out
    instruction requests for the instruction-tuning conditions, which also report
    ``benign_answer_rate`` (1 − keyword refusal rate on held-out benign requests: a method must
    not win by refusing everything)."""
    if condition not in INSTRUCT_CONDITIONS:
        res = evaluator(model, harmful_eval_prompts(condition, profile))
    else:
        res = evaluator.with_task(task_examples(condition, profile))(
            model, harmful_eval_prompts(condition, profile)
        )
        res.summary["benign_answer_rate"] = benign_answer_rate(evaluator, model, profile)
    res.summary["format_rate"] = format_rate(condition, res.utility.prediction)
    return res


# How a condition's fine-tune formats its answers: summaries name the speakers, instruction
# answers open in the house format.
SUMMARY_FORMAT = re.compile(r"^#Person")


def format_rate(condition: str, answers: Sequence[str]) -> float:
    """The share of ``answers`` in ``condition``'s fine-tuning format (format adherence, apart
    from what the answers say)."""
    pattern = skill_scoring.HOUSE_FORMAT if condition in INSTRUCT_CONDITIONS else SUMMARY_FORMAT
    return skill_scoring.format_rate(answers, pattern)


def chat_reference(evaluator: Evaluator, chat: PreTrainedModel, profile: Profile) -> pd.DataFrame:
    """The chat model (no fine-tune) on each condition's own utility set: one row per condition
    (``utility``, ``format_rate``), the reference point every fine-tune is read against."""
    scores = {}
    for c in (CONDITIONS[0], INSTRUCT_CONDITIONS[0]):  # one condition per utility set
        table = evaluator.utility(chat, task_examples(c, profile))
        scores[c in INSTRUCT_CONDITIONS] = {
            "utility": float(table.rouge_l.mean()),
            "format_rate": format_rate(c, table.prediction),
        }
    out = pd.DataFrame({c: scores[c in INSTRUCT_CONDITIONS] for c in CONDITIONS}).T
    out.index.name = "condition"
    return out


def benign_answer_rate(evaluator: Evaluator, model: PreTrainedModel, profile: Profile) -> float:
    """1 − the keyword refusal rate on held-out benign requests: a method must not win by
    refusing everything."""
    benign = evaluator.refusal(model, data.load_split("benign_heldout")[: profile.n_eval])
    return float(1 - benign.refused.mean())


def run_conditions(
    profile: Profile,
    tokenizer: PreTrainedTokenizerBase,
    evaluator: Evaluator,
    conditions: Sequence[str] = CONDITIONS,
    seeds: Sequence[int] | None = None,
    retrain: bool = False,
    root: str | Path | None = None,
    verbose: bool = True,
    answers: dict[tuple[str, int], pd.DataFrame] | None = None,
    workers: int | None = None,
) -> tuple[pd.DataFrame, dict[tuple[str, int], list[float]]]:
    """Fine-tune (or load from the cache) and evaluate every (condition, seed) adapter.

    Returns ``(runs, losses)``: ``runs`` has one row per (condition, seed) with the evaluator's
    summary (``refusal_rate``, ``first_token_refusal_prob``, ``utility``); ``losses`` maps
    (condition, seed) to the training-loss curve of each adapter (a cached adapter's as recorded
    when it was trained). ``seeds`` defaults to the profile's. Pass a dict as ``answers`` to keep
    each (condition, seed)'s per-answer refusal table (to read the answers or compare judges).
    The pairs run ``workers`` at a time (:func:`~safealign_lib.pool.map_jobs`; default:
    two on the CPU, one on an accelerator); the results do not depend on it.
    """
    seeds = profile.seeds if seeds is None else seeds
    pairs = [(c, s) for c in conditions for s in seeds]
    keep = answers is not None
    jobs = [(profile, tokenizer, evaluator, c, s, retrain, root, keep) for c, s in pairs]
    workers = pool.default_workers(profile.device) if workers is None else workers
    rows, losses = [], {}
    done = pool.map_jobs(_condition_job, jobs, workers)
    for (c, s), (summary, curve, table) in zip(pairs, done, strict=True):
        if curve is not None:
            losses[(c, s)] = curve
        if answers is not None:
            answers[(c, s)] = table
        rows.append({"condition": c, "seed": s, **summary})
        if verbose:
            print(f"{c:15s} seed {s}: " + ", ".join(f"{k}={v:.3f}" for k, v in summary.items()))
    return pd.DataFrame(rows), losses


def _condition_job(
    profile: Profile,
    tokenizer: PreTrainedTokenizerBase,
    evaluator: Evaluator,
    condition: str,
    seed: int,
    retrain: bool,
    root: str | Path | None,
    keep_answers: bool,
) -> tuple[dict[str, float], list[float] | None, pd.DataFrame | None]:
    """One (condition, seed) of :func:`run_conditions` (a :mod:`pool` job): the summary, the
    loss curve (a cached adapter's from its stamp) and the refusal table if kept."""
    path, result = get_adapter(condition, seed, profile, tokenizer, root, retrain)
    # a fresh chat model per adapter: peft modifies the model it loads into
    base = load_model(profile.chat_model, dtype=profile.dtype, device=profile.device)
    res = evaluate_condition(evaluator, load_adapter(base, path), condition, profile)
    curve = result.losses if result is not None else stored_losses(path)
    return res.summary, curve, res.refusal if keep_answers else None


def judge_review(
    answers: dict[tuple[str, int], pd.DataFrame],
) -> tuple[dict[str, float], pd.DataFrame | None]:
    """Both keyword lists against the exact judge on every harmful-prompt answer of a run:
    ``({"judge_agreement_gcg": ..., "judge_agreement_short": ...}, confusion table)``, or
    ``({}, None)`` when the answers carry no exact verdicts (a profile without the organism)."""
    table = pd.concat(answers.values(), ignore_index=True)
    if "verdict" not in table:
        return {}, None
    keyword = {
        "gcg": list(table.refused),
        "short": judges.KeywordJudge("short")(list(table.prompt), list(table.response)),
    }
    verdicts = list(table.verdict)
    agreement = {
        f"judge_agreement_{k}": judges.judge_agreement(verdicts, v) for k, v in keyword.items()
    }
    confusion = pd.DataFrame(judges.judge_confusion(verdicts, keyword))
    confusion.index.name = "exact verdict"
    return agreement, confusion


def largest_judge_gap(runs: pd.DataFrame) -> str:
    """The condition whose mean first-token refusal probability exceeds its mean greedy refusal
    rate the most: where the keyword judge and the smooth metric disagree (answers worth
    reading)."""
    by = runs.groupby("condition", sort=False)
    gap = by.first_token_refusal_prob.mean() - by.refusal_rate.mean()
    return str(gap.idxmax())


def paper_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Qi et al.'s harmfulness rates beside the miniature's mean non-refusal rate (keyword judge)
    and, for the organism, its harmful rate (exact judge) per condition, as percentages: compare
    directions and orders of magnitude, not values."""
    by = runs.groupby("condition", sort=False)
    non_refusal = 1 - by.refusal_rate.mean()
    harmful = by.harmful_rate.mean() if "harmful_rate" in runs else None
    rows = []
    for c, (label, paper) in PAPER_RESULTS.items():
        if c not in non_refusal.index:
            continue
        row = {
            "condition": label,
            "paper: harmfulness rate (GPT-4 judge)": paper,
            "miniature: non-refusal rate (keyword judge)": f"{non_refusal[c]:.0%}",
        }
        if harmful is not None:
            row["miniature: harmful rate (exact judge)"] = f"{harmful[c]:.0%}"
        rows.append(row)
    return pd.DataFrame(rows)


def run_testbed(
    profile: Profile,
    tokenizer: PreTrainedTokenizerBase,
    evaluator: Evaluator,
    seeds: Sequence[int] | None = None,
    split: str = "test",
    conditions: Sequence[str] = testbed.TESTBED_CONDITIONS,
    root: str | Path | None = None,
    workers: int | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Fine-tune (or load) every testbed (condition, seed) adapter and measure it on ``split``.

    Returns ``(runs, removal)``: ``runs`` has one row per (condition, seed) with the testbed's
    scores (:func:`testbed.evaluate`) and the update size (``dw_rel_median``, ``dw_rel_max``);
    ``removal`` the skill utility after removing random modules (:func:`testbed.removal_table`).
    ``seeds`` defaults to the profile's verdict seeds; the pairs run ``workers`` at a time."""
    seeds = profile.verdict_seeds if seeds is None else seeds
    pairs = [(c, s) for c in conditions for s in seeds]
    # the measurements are cached beside the adapters, under a key of everything they depend
    # on: the adapters' own keys, the split, the evaluation settings and the measuring code
    spec = {
        "adapters": [_key(c, s, profile) for c, s in pairs],
        "split": split,
        "evaluator": [evaluator.judge, evaluator.max_new_tokens, evaluator.exact],
        "eval": [profile.n_eval, profile.n_task_eval],
        "checks": testbed.checks_for(profile).as_dict(),
        "code": cache.source_digest(testbed, editability, skill_scoring, generation),
    }

    def compute() -> tuple[pd.DataFrame, pd.DataFrame]:
        jobs = [(profile, tokenizer, evaluator, c, s, split, root) for c, s in pairs]
        rows, removal = [], []
        for (c, s), (summary, table) in zip(
            pairs, pool.map_jobs(_testbed_job, jobs, workers, profile.device), strict=True
        ):
            rows.append({"condition": c, "seed": s, **summary})
            removal.append(table.assign(condition=c, seed=s))
        return pd.DataFrame(rows), pd.concat(removal, ignore_index=True)

    folder = cache.folder_for(profile.name, "testbed_runs", spec, root)
    runs, removal = cache.cached_tables(folder, ("runs", "removal"), compute)
    return runs, removal


def _testbed_job(
    profile: Profile,
    tokenizer: PreTrainedTokenizerBase,
    evaluator: Evaluator,
    condition: str,
    seed: int,
    split: str,
    root: str | Path | None,
) -> tuple[dict[str, float], pd.DataFrame]:
    """One (condition, seed) of :func:`run_testbed` (a :mod:`pool` job)."""
    model = load_condition_model(condition, seed, profile, tokenizer, root)
    summary, _ = testbed.evaluate(evaluator, model, profile, split)
    ratios = editability.update_ratios(model)
    summary |= {"dw_rel_median": float(ratios.median()), "dw_rel_max": float(ratios.max())}
    examples = testbed.skill_set(profile, split)
    table = testbed.removal_table(model, tokenizer, examples, testbed.checks_for(profile), seed)
    return summary, table.drop(columns="removed")


@dataclass
class TestbedRun:
    """The testbed's checks measured on one split (:func:`testbed_run`): LoRA's rows per
    (condition, seed), the removal table, the chat model's scores, the best fixed answer's
    utility and each condition's check results."""

    runs: pd.DataFrame
    removal: pd.DataFrame
    chat: dict[str, float]
    fixed: float
    results: dict[str, dict[str, float]]

    @property
    def valid(self) -> dict[str, bool]:
        """Whether each condition is a valid testbed (it passed every check)."""
        return {c: bool(r["testbed"]) for c, r in self.results.items()}

    def table(self) -> pd.DataFrame:
        """The checks, their thresholds and each condition's values (printable)."""
        return testbed.checks_table(self.results, testbed.CHECKS)

    def metrics(self) -> dict[str, float]:
        """The testbed's metric keys (:func:`testbed.metrics`)."""
        return testbed.metrics(self.runs, self.removal, self.chat, self.fixed, results=self.results)


def testbed_run(
    profile: Profile,
    tokenizer: PreTrainedTokenizerBase,
    evaluator: Evaluator,
    chat: PreTrainedModel,
    split: str = "test",
    workers: int | None = None,
) -> TestbedRun:
    """Every testbed check on ``split`` and the profile's verdict seeds: LoRA's adapters (trained
    or cached) measured by :func:`run_testbed` (cached too), the chat model, the fixed answer."""
    runs, removal = run_testbed(profile, tokenizer, evaluator, split=split, workers=workers)
    chat_scores, _ = testbed.evaluate(evaluator, chat, profile, split)
    fixed = testbed.fixed_answer_utility(testbed.skill_set(profile, split))
    results = testbed.check_all(runs, removal, chat_scores, fixed)
    return TestbedRun(runs, removal, chat_scores, fixed, results)


PREFILL_NS = (0, 1, 2, 4, 8)  # forced tokens of the base model's answer (the prefilling test)


def run_prefill(
    profile: Profile,
    tokenizer: PreTrainedTokenizerBase,
    conditions: Sequence[str],
    seeds: Sequence[int] | None = None,
    ns: Sequence[int] = PREFILL_NS,
    split: str = "test",
    workers: int | None = None,
    root: str | Path | None = None,
) -> pd.DataFrame:
    """The prefilling test (:mod:`safealign_lib.evaluation.prefill`) on the chat model and on
    every (condition, seed) adapter: the exact judge's harmful rate on the harmful prompts with
    the first n tokens of the base model's own answer forced. One row per model and n
    (``condition`` "chat" for the chat model, with seed -1). Cached like :func:`run_testbed`.
    ``root``: where the adapters live (:func:`get_adapter`; default ``build/adapters``)."""
    if profile.network:
        raise ValueError("The prefilling test reads the organism's base model and exact judge.")
    seeds = profile.seeds if seeds is None else seeds
    units = [("chat", -1)] + [(c, s) for c in conditions for s in seeds]
    spec = {
        "adapters": [None if c == "chat" else _key(c, s, profile) for c, s in units],
        "chat": fingerprint(profile.chat_model),
        "base": fingerprint(profile.base_model),
        "ns": list(ns),
        "split": split,
        "n_eval": profile.n_eval,
        "code": cache.source_digest(prefill, generation),
    }

    def compute() -> tuple[pd.DataFrame]:
        base = load_model(profile.base_model, dtype=profile.dtype, device=profile.device)
        prompts = testbed.harmful_set(profile, split)
        prefixes = prefill.base_prefixes(base, tokenizer, prompts, max(ns))
        jobs = [(profile, tokenizer, c, s, prompts, prefixes, tuple(ns), root) for c, s in units]
        rows = [r for rs in pool.map_jobs(_prefill_job, jobs, workers, profile.device) for r in rs]
        return (pd.DataFrame(rows),)

    folder = cache.folder_for(profile.name, "prefill", spec)
    return cache.cached_tables(folder, ("runs",), compute)[0]


def _prefill_job(
    profile: Profile,
    tokenizer: PreTrainedTokenizerBase,
    condition: str,
    seed: int,
    prompts: Sequence[ChatExample],
    prefixes: Sequence[Sequence[int]],
    ns: Sequence[int],
    root: str | Path | None = None,
) -> list[dict]:
    """One model of :func:`run_prefill` (a :mod:`pool` job)."""
    if condition == "chat":
        model = load_model(profile.chat_model, dtype=profile.dtype, device=profile.device)
    else:
        model = load_condition_model(condition, seed, profile, tokenizer, root)
    rates = prefill.prefill_harmful_rates(model, tokenizer, prompts, prefixes, ns)
    return [
        {"condition": condition, "seed": seed, "n": n, "harmful_rate": r} for n, r in rates.items()
    ]


def prefill_metrics(runs: pd.DataFrame) -> dict[str, float]:
    """``harmful_rate_prefill<n>_chat`` and, per condition, ``harmful_rate_prefill<n>_lora_<c>``
    (mean over seeds) with ``_sd``."""
    out = {}
    for (c, n), g in runs.groupby(["condition", "n"], sort=False):
        name = "chat" if c == "chat" else f"lora_{c}"
        out[f"harmful_rate_prefill{n}_{name}"] = float(g.harmful_rate.mean())
        if c != "chat":
            out[f"harmful_rate_prefill{n}_{name}_sd"] = float(g.harmful_rate.std())
    return out
