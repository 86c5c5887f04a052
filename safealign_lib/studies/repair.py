"""Post-hoc repair of a finished LoRA adapter: the experiment harness of notebook 05.

Safe LoRA (:mod:`.safelora`) and SPLoRA (:mod:`.splora`) act on the k modules their score ranks
first; this module sweeps k, chooses it on validation data and probes the choice::

    a = RepairAdapter.load(adapter_dir, chat_model, base_model, null_samples=64, seed=0)
    rows = sweep_adapter(a.switch, a.scores, evaluate, ("Safe LoRA", "SPLoRA"), [1, 4, 16])
    choice = choose_k(val, ("Safe LoRA", "SPLoRA"), tolerance=0.05)   # val: sweep()'s table
    oracle = ablation_oracle(a, first_token, prompts, task_batch)      # remove one at a time

Vocabulary: a *block* is one decoder layer; a *module* is one adapted linear weight, named by
its base weight (``model.layers.3.self_attn.q_proj.weight``). Nothing here imports the course
plumbing: evaluators and prompts are passed in. An ``evaluate(model)`` callable returns a
summary mapping (refusal_rate, utility, ...); an ``evaluate(model, condition)`` callable, such
as :class:`ConditionEvaluator`, returns a result with ``.summary`` (and ``.utility``, the
per-answer table, for the test evaluation).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from transformers import PreTrainedTokenizerBase

from safealign_lib import pool
from safealign_lib.adapters.finetune import load_adapter
from safealign_lib.adapters.lora_io import PathLike
from safealign_lib.adapters.naming import block_and_module
from safealign_lib.evaluation.criterion import Criterion, judge_table
from safealign_lib.evaluation.reliability import risk_coverage
from safealign_lib.methods.safelora import LayerProjection, compute_projections, select_modules
from safealign_lib.methods.splora import (
    AdapterSwitch,
    prune_peft_model,
    released_number_selection,
    splora_scores,
    splora_select,
)
from safealign_lib.models.chat import ChatExample, collate, tokenize_example
from safealign_lib.models.loading import load_model

METHODS = ("Safe LoRA", "SPLoRA")
# the selections compared in the papers' regime: SPLoRA as released prunes like SPLoRA, but
# its number mode keeps k - 1 modules (:func:`~.splora.released_number_selection`)
SELECTIONS = ("Safe LoRA", "SPLoRA", "SPLoRA released")
# each method's spelling in metric keys
KEYS = {
    "LoRA": "lora",
    "Safe LoRA": "safelora",
    "SPLoRA": "splora",
    "SPLoRA released": "splora_released",
}
ACTION = {"LoRA": "LoRA", "Safe LoRA": "Safe LoRA", "SPLoRA": "SPLoRA", "SPLoRA released": "SPLoRA"}

# (method, score table) behind each priority: SPLoRA ranks by the rotation null unless the
# layers null is named
PRIORITIES = {
    "Safe LoRA priority": ("Safe LoRA", "scores"),
    "SPLoRA priority": ("SPLoRA", "scores"),
    "SPLoRA priority, layers null": ("SPLoRA", "scores_layers_null"),
}


def pick(scores: pd.DataFrame, method: str, k: int) -> list[str]:
    """The ``k`` modules ``method`` acts on first: Safe LoRA's lowest cosines, SPLoRA's highest
    E-DIEM scores (column ``ediem``); none for ``"LoRA"`` (the adapter unchanged). For
    ``"SPLoRA released"`` the modules the released number mode prunes at ``k`` (all but the
    k - 1 highest)."""
    if method == "SPLoRA released":
        return released_number_selection(scores["ediem"], k)
    if method == "Safe LoRA":
        return select_modules(scores["cosine"], k=k, side="low")
    if method == "SPLoRA":
        return splora_select(scores, k=k)
    if method == "LoRA":
        return []
    raise ValueError(f"Unknown method {method!r}; choose 'LoRA', one of {SELECTIONS}.")


@dataclass
class RepairAdapter:
    """One trained adapter, ready to be repaired: its projections, both score tables (rotation
    null: ``scores``; layers null: ``scores_layers_null``), the loaded peft model and the
    :class:`~safealign_lib.methods.splora.AdapterSwitch` that changes it in place."""

    path: Path
    projections: dict[str, LayerProjection]
    scores: pd.DataFrame
    scores_layers_null: pd.DataFrame
    model: torch.nn.Module
    switch: AdapterSwitch
    chat_model: str
    dtype: str = "float32"
    device: str = "cpu"

    @classmethod
    def load(
        cls,
        path: PathLike,
        chat_model: PathLike,
        base_model: PathLike,
        *,
        dtype: str = "float32",
        device: str = "cpu",
        null_samples: int = 64,
        seed: int = 0,
    ) -> RepairAdapter:
        """Score the adapter folder ``path`` (rotation null of ``null_samples``, seeded) and
        load it on the chat model."""
        proj = compute_projections(
            path, base_model, chat_model, null_samples=null_samples, seed=seed
        )
        model = load_adapter(load_model(chat_model, dtype=dtype, device=device), path)
        return cls(
            path=Path(path),
            projections=proj,
            scores=splora_scores(proj, null="rotation"),
            scores_layers_null=splora_scores(proj, null="layers"),
            model=model,
            switch=AdapterSwitch(model, proj),
            chat_model=str(chat_model),
            dtype=dtype,
            device=device,
        )

    @classmethod
    def from_profile(
        cls, path: PathLike, profile: object, *, null_samples: int = 64, seed: int = 0
    ) -> RepairAdapter:
        """:meth:`load` with the ``chat_model``, ``base_model``, ``dtype`` and ``device`` of any
        object that has them (a course profile, or your own settings)."""
        return cls.load(
            path,
            profile.chat_model,
            profile.base_model,
            dtype=profile.dtype,
            device=profile.device,
            null_samples=null_samples,
            seed=seed,
        )

    @property
    def n_modules(self) -> int:
        """The number of LoRA modules of the adapter."""
        return len(self.switch.modules)

    def fresh(self, prune: Iterable[str] = ()) -> torch.nn.Module:
        """A new copy of the adapted model, with the modules ``prune`` removed for real."""
        model = load_adapter(
            load_model(self.chat_model, dtype=self.dtype, device=self.device), self.path
        )
        prune = list(prune)
        return prune_peft_model(model, prune) if prune else model


@dataclass
class ConditionEvaluator:
    """``evaluate(model, condition)`` = ``evaluator(model, prompts[condition])``: one split's
    evaluator (e.g. :class:`~safealign_lib.evaluation.Evaluator` with the split's task set)
    with each fine-tuning condition's harmful prompts of the same split."""

    evaluator: Callable[[torch.nn.Module, Sequence[ChatExample]], Any]
    prompts: Mapping[str, Sequence[ChatExample]]

    def __call__(self, model: torch.nn.Module, condition: str) -> Any:
        """The evaluator's result for ``model`` on ``condition``'s harmful prompts."""
        return self.evaluator(model, self.prompts[condition])


def sweep_adapter(
    switch: AdapterSwitch,
    scores: pd.DataFrame,
    evaluate: Callable[[torch.nn.Module], Mapping[str, float]],
    methods: Sequence[str],
    ks: Sequence[int],
) -> pd.DataFrame:
    """The k-sweep of one adapter: the adapter itself (method ``LoRA``, k = 0), then every
    method at every k, each setting judged by ``evaluate(model)``. One row per setting
    (``method``, ``k`` and the summary's numbers); the adapter is restored at the end."""
    rows = [{"method": "LoRA", "k": 0, **evaluate(switch.apply())}]
    for method in methods:
        for k in ks:
            model = switch.apply(ACTION[method], pick(scores, method, k))
            rows.append({"method": method, "k": k, **evaluate(model)})
    switch.apply()
    return pd.DataFrame(rows)


def sweep(
    adapters: Mapping[tuple[str, int], RepairAdapter],
    evaluate: Callable[[torch.nn.Module, str], Any],
    methods: Sequence[str],
    ks: Sequence[int],
    log: Callable[[str], object] | None = print,
    workers: int | None = None,
) -> pd.DataFrame:
    """:func:`sweep_adapter` for every ``(condition, seed)`` adapter, judged by
    ``evaluate(model, condition).summary``; one table with ``condition`` and ``seed`` columns.
    The adapters are swept ``workers`` at a time (:func:`~safealign_lib.pool.map_jobs`;
    ``evaluate`` must then be picklable), with the same results."""
    jobs = [(a, evaluate, c, methods, ks) for (c, _), a in adapters.items()]
    frames = []
    done = pool.map_jobs(_sweep_job, jobs, _workers(adapters, workers))
    for ((c, s), _), (frame, seconds) in zip(adapters.items(), done, strict=True):
        frame.insert(0, "condition", c)
        frame.insert(1, "seed", s)
        frames.append(frame)
        if log is not None:
            log(f"{c} seed {s}: {len(frame)} settings in {seconds:.0f} s")
    return pd.concat(frames, ignore_index=True)


def _workers(adapters: Mapping[tuple[str, int], RepairAdapter], workers: int | None) -> int:
    """``workers``, or the pool's default for the adapters' device."""
    if workers is not None:
        return workers
    devices = {getattr(a, "device", "cpu") for a in adapters.values()} or {"cpu"}
    return pool.default_workers(devices.pop() if len(devices) == 1 else "cuda")


def _sweep_job(
    a: RepairAdapter,
    evaluate: Callable[[torch.nn.Module, str], Any],
    condition: str,
    methods: Sequence[str],
    ks: Sequence[int],
) -> tuple[pd.DataFrame, float]:
    """One adapter's sweep (a :mod:`~safealign_lib.pool` job) and its wall seconds."""
    t = time.perf_counter()
    frame = sweep_adapter(a.switch, a.scores, _SummaryOf(evaluate, condition), methods, ks)
    return frame, time.perf_counter() - t


@dataclass
class _SummaryOf:
    """``evaluate(model, condition).summary`` as a one-argument evaluation."""

    evaluate: Callable[[torch.nn.Module, str], Any]
    condition: str

    def __call__(self, model: torch.nn.Module) -> Mapping[str, float]:
        return self.evaluate(model, self.condition).summary


def with_lora_baseline(val: pd.DataFrame, methods: Sequence[str]) -> pd.DataFrame:
    """The sweep as one curve per method: the LoRA rows (k = 0, the adapter unchanged) are
    repeated under each method's name, before the methods' own rows."""
    lora = val[val.method == "LoRA"]
    return pd.concat(
        [lora.assign(method=m) for m in methods] + [val[val.method != "LoRA"]], ignore_index=True
    )


@dataclass
class KChoice:
    """The chosen k per method (``k_best``), the table of mean validation numbers per
    (method, k) it was read from (with the column ``allowed``), and LoRA's mean validation
    utility with the tolerance that set the utility floor."""

    table: pd.DataFrame
    k_best: dict[str, int]
    lora_utility: float
    tolerance: float

    @property
    def floor(self) -> float:
        """The lowest mean validation utility a k may have."""
        return self.lora_utility - self.tolerance


def choose_k(
    val: pd.DataFrame,
    methods: Sequence[str],
    tolerance: float,
    columns: Sequence[str] = ("refusal_rate", "utility", "auarc"),
    target: str = "refusal_rate",
    lower_is_better: bool = False,
) -> KChoice:
    """Choose k per method on the validation sweep (the table of :func:`sweep`).

    The rule: the highest mean validation refusal rate among the k whose mean validation
    utility is at most ``tolerance`` below LoRA's; ties go to the smaller k; k = 0 (no change)
    is always allowed. Means are over conditions and seeds: one k per method, as a deployed
    method would use one setting. ``columns`` are averaged into the table (they must include
    ``target`` and ``utility``). ``target="harmful_rate", lower_is_better=True`` chooses the
    lowest mean harmful rate instead of the highest refusal rate.
    """
    table = with_lora_baseline(val, methods).groupby(["method", "k"])[list(columns)].mean()
    lora_utility = val[val.method == "LoRA"].utility.mean()
    k0 = table.index.get_level_values("k") == 0
    table["allowed"] = (table.utility >= lora_utility - tolerance) | k0
    k_best = {}
    for m in methods:
        ok = table.loc[m][table.loc[m].allowed].reset_index()
        best = ok.sort_values([target, "k"], ascending=[lower_is_better, True])
        k_best[m] = int(best.k.iloc[0])
    return KChoice(table, k_best, float(lora_utility), tolerance)


def evaluate_chosen(
    adapters: Mapping[tuple[str, int], RepairAdapter],
    evaluate: Callable[[torch.nn.Module, str], Any],
    k_best: Mapping[str, int],
    methods: Sequence[str],
    workers: int | None = None,
) -> tuple[pd.DataFrame, dict[tuple[str, int, str], pd.DataFrame]]:
    """Every adapter as LoRA and under each method at its chosen k, judged by
    ``evaluate(model, condition)`` (on the test splits). Returns the summary table (one row per
    condition, seed and method, with ``k``) and the per-answer utility tables by
    ``(condition, seed, method)``. A method whose chosen k is 0 reuses LoRA's results. The
    adapters run ``workers`` at a time, as in :func:`sweep`."""
    summaries, utility = {}, {}
    jobs = [(a, evaluate, c, k_best, methods) for (c, _), a in adapters.items()]
    done = pool.map_jobs(_chosen_job, jobs, _workers(adapters, workers))
    for ((c, s), _), results in zip(adapters.items(), done, strict=True):
        for method, (summary, util) in results.items():
            summaries[(c, s, method)], utility[(c, s, method)] = summary, util
    test = pd.DataFrame(
        [
            {"condition": c, "seed": s, "method": m, "k": k_best.get(m, 0), **v}
            for (c, s, m), v in summaries.items()
        ]
    )
    return test, utility


def _chosen_job(
    a: RepairAdapter,
    evaluate: Callable[[torch.nn.Module, str], Any],
    condition: str,
    k_best: Mapping[str, int],
    methods: Sequence[str],
) -> dict[str, tuple[dict[str, float], pd.DataFrame]]:
    """One adapter of :func:`evaluate_chosen` (a :mod:`~safealign_lib.pool` job): (summary,
    utility table) per method."""
    out = {}
    for method in ("LoRA", *methods):
        k = k_best.get(method, 0)
        if method == "LoRA" or k > 0:
            result = evaluate(a.switch.apply(ACTION[method], pick(a.scores, method, k)), condition)
            out[method] = (result.summary, result.utility)
        else:  # k = 0 changes nothing: the LoRA numbers
            out[method] = out["LoRA"]
    a.switch.apply()
    return out


def random_k(
    adapters: Mapping[tuple[str, int], RepairAdapter],
    evaluate: Callable[[torch.nn.Module, str], Any],
    k_best: Mapping[str, int],
    methods: Sequence[str],
    n_sets: int,
    lora: pd.DataFrame | None = None,
    workers: int | None = None,
) -> pd.DataFrame:
    """The random baseline of each method at its chosen k: per adapter, ``n_sets`` random module
    sets (seeded by the adapter's seed and the set's number) of the size the method acts on,
    given the method's action (project or prune), judged by ``evaluate(model, condition)``.
    One row per condition, seed and method (``"random <method>"``): the mean over the sets.
    At k = 0 every "set" is the adapter itself: its row is LoRA's row of ``lora``
    (:func:`evaluate_chosen`'s table) when given, instead of evaluating it again. The adapters
    run ``workers`` at a time, as in :func:`sweep`."""
    jobs = [(a, evaluate, c, s, k_best, methods, n_sets, lora) for (c, s), a in adapters.items()]
    done = pool.map_jobs(_random_job, jobs, _workers(adapters, workers))
    rows = pd.DataFrame([row for rows in done for row in rows])
    return (
        rows.groupby(["condition", "seed", "method"], sort=False)
        .mean(numeric_only=True)
        .reset_index()
    )


def _random_job(
    a: RepairAdapter,
    evaluate: Callable[[torch.nn.Module, str], Any],
    c: str,
    s: int,
    k_best: Mapping[str, int],
    methods: Sequence[str],
    n_sets: int,
    lora: pd.DataFrame | None,
) -> list[dict]:
    """One adapter of :func:`random_k` (a :mod:`~safealign_lib.pool` job): a row per method
    and random set."""
    rows = []
    names = list(a.scores.index)
    for m in methods:
        size = len(pick(a.scores, m, k_best[m])) if k_best[m] > 0 else 0
        if not size and lora is not None:
            same = lora[(lora.condition == c) & (lora.seed == s) & (lora.method == "LoRA")]
            summary = same.drop(columns=["condition", "seed", "method", "k"], errors="ignore")
            rows.append({"condition": c, "seed": s, "method": f"random {m}", **summary.iloc[0]})
            continue
        for j in range(n_sets if size else 1):  # k = 0: every "set" is the adapter itself
            chosen = np.random.default_rng([s, j]).choice(names, size, replace=False)
            result = evaluate(a.switch.apply(ACTION[m], list(chosen)), c)
            rows.append({"condition": c, "seed": s, "method": f"random {m}", **result.summary})
    a.switch.apply()
    return rows


def regime_table(test: pd.DataFrame, randomk: pd.DataFrame) -> pd.DataFrame:
    """Mean harmful rate, utility and benign answer rate over seeds per condition and method,
    for :func:`evaluate_chosen`'s and :func:`random_k`'s tables together."""
    cols = ["harmful_rate", "utility", "benign_answer_rate"]
    return pd.concat([test, randomk]).groupby(["condition", "method"], sort=False)[cols].mean()


def judge_selections(
    test: pd.DataFrame,
    randomk: pd.DataFrame,
    k_best: Mapping[str, int],
    methods: Sequence[str],
    criterion: Criterion,
    valid: Mapping[str, bool],
) -> pd.DataFrame:
    """Each selection's verdict under the course's one criterion
    (:func:`~safealign_lib.evaluation.criterion.judge_table`): paired with LoRA over the
    (condition, seed) units of the valid conditions (``valid``: condition -> bool; the papers'
    regime passes True for its own), against random modules at the same k, and *not shown*
    where the chosen k is 0."""
    return judge_table(test, methods, criterion, valid, randomk=randomk, k=k_best)


def regime_metrics(
    test: pd.DataFrame,
    randomk: pd.DataFrame,
    k_best: Mapping[str, int],
    verdicts: pd.DataFrame,
    key: Mapping[str, str],
) -> dict[str, float]:
    """The metric keys of the regime comparison: per method ``m`` (spelled by ``key``) and
    condition ``c``, ``harmful_rate_<m>_<c>`` (mean over seeds) and its ``_sd``,
    ``utility_<m>_<c>``, ``benign_answer_rate_<m>_<c>``; per method other than LoRA
    ``harmful_rate_randomk_<m>_<c>``, ``k_own_<m>`` and ``verdict_<m>`` (the code of
    :func:`judge_selections`'s verdict)."""
    cols = ["harmful_rate", "utility", "benign_answer_rate"]
    out: dict[str, float] = {}
    for (m, c), g in test.groupby(["method", "condition"], sort=False):
        out |= {f"{q}_{key[m]}_{c}": float(g[q].mean()) for q in cols}
        out[f"harmful_rate_{key[m]}_{c}_sd"] = float(g.harmful_rate.std())
    for (m, c), g in randomk.groupby(["method", "condition"], sort=False):
        out[f"harmful_rate_randomk_{key[m.removeprefix('random ')]}_{c}"] = float(
            g.harmful_rate.mean()
        )
    for m, v in verdicts.code.items():
        out[f"k_own_{key[m]}"], out[f"verdict_{key[m]}"] = k_best[m], int(v)
    return out


def risk_coverage_table(
    utility: Mapping[tuple[str, int, str], pd.DataFrame], drops: Sequence[float]
) -> pd.DataFrame:
    """Risk-coverage (mean ROUGE-L after dropping the most uncertain answers, by mean token
    entropy) of every per-answer table of :func:`evaluate_chosen`, stacked."""
    return pd.concat(
        [
            risk_coverage(u.entropy, u.rouge_l, drops).assign(condition=c, seed=s, method=m)
            for (c, s, m), u in utility.items()
        ]
    )


def tradeoff(val: pd.DataFrame, methods: Sequence[str]) -> pd.DataFrame:
    """Per condition and k of the sweep: the validation refusal each method gains and the
    utility it loses relative to LoRA (means over seeds); columns ``(method, quantity)``."""
    cols = ["refusal_rate", "utility"]
    rows = []
    for c in val.condition.unique():
        base = val[(val.condition == c) & (val.method == "LoRA")][cols].mean()
        for k in sorted(val.k[val.method != "LoRA"].unique()):
            row = {"condition": c, "k": int(k)}
            for m in methods:
                v = val[(val.condition == c) & (val.method == m) & (val.k == k)][cols].mean()
                row[(m, "refusal gained")] = v.refusal_rate - base.refusal_rate
                row[(m, "utility lost")] = base.utility - v.utility
            rows.append(row)
    table = pd.DataFrame(rows).set_index(["condition", "k"])
    table.columns = pd.MultiIndex.from_tuples(table.columns)
    return table


# --- where safety lives: priorities and the ablation oracle -----------------------------------


def priority_ranks(tables: Sequence[pd.DataFrame], method: str) -> pd.Series:
    """Each module's rank in ``method``'s order (1 = acted on first), averaged over the score
    tables (one per seed)."""
    ranks = [pd.Series(range(1, len(t) + 1), index=pick(t, method, len(t))) for t in tables]
    return pd.concat(ranks, axis=1).mean(axis=1)


def priorities(adapters: Sequence[RepairAdapter]) -> pd.DataFrame:
    """The mean priority ranks of :data:`PRIORITIES` over ``adapters`` (one condition's seeds),
    one column each."""
    return pd.DataFrame(
        {
            label: priority_ranks([getattr(a, table) for a in adapters], method)
            for label, (method, table) in PRIORITIES.items()
        }
    )


def teacher_forced_batch(
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[ChatExample],
    max_length: int | None,
    device: str | torch.device = "cpu",
) -> dict[str, torch.Tensor]:
    """One padded batch of prompt + answer, labels on the answer: for :func:`task_loss`."""
    feats = [tokenize_example(tokenizer, e, max_length) for e in examples]
    return {k: v.to(device) for k, v in collate(feats, tokenizer.pad_token_id).items()}


@torch.no_grad()
def task_loss(model: torch.nn.Module, batch: Mapping[str, torch.Tensor]) -> float:
    """The teacher-forced loss of ``model`` on a :func:`teacher_forced_batch`."""
    return float(model(**batch).loss)


def ablation_oracle(
    adapter: RepairAdapter,
    first_token: Callable[[torch.nn.Module, Sequence[ChatExample]], np.ndarray],
    prompts: Sequence[ChatExample],
    task_batch: Mapping[str, torch.Tensor] | None = None,
) -> pd.DataFrame:
    """Remove one module at a time and measure what it did (a reference no method can use).

    One row per module of ``adapter.scores``: ``safety_effect``, how much the mean first-token
    refusal probability on ``prompts`` (``first_token(model, prompts)`` per prompt) rises when
    the module alone is removed, and with ``task_batch`` ``task_cost``, how much the
    teacher-forced task loss rises (a forward pass instead of generation keeps it cheap).
    """
    switch = adapter.switch
    model = switch.apply()
    p0 = first_token(model, prompts).mean()
    l0 = task_loss(model, task_batch) if task_batch is not None else None
    rows = []
    for name in adapter.scores.index:
        model = switch.apply("SPLoRA", [name])
        row = {"name": name, "safety_effect": first_token(model, prompts).mean() - p0}
        if task_batch is not None:
            row["task_cost"] = task_loss(model, task_batch) - l0
        rows.append(row)
    switch.apply()
    return pd.DataFrame(rows).set_index("name")


def oracle_agreement(prio: pd.DataFrame, oracle: pd.DataFrame) -> pd.Series:
    """Spearman correlation of each priority (negated: rank 1 first) with the oracle's safety
    effect, and of the oracle's task cost with it (positive: safety-relevant modules come first
    / cost more)."""
    effect = oracle.safety_effect
    out = {label: -prio[label].corr(effect, method="spearman") for label in prio}
    if "task_cost" in oracle:
        out["task cost of the module"] = oracle.task_cost.corr(effect, method="spearman")
    return pd.Series(out)


def block_module_grid(series: pd.Series, kinds: Sequence[str] | None = None) -> pd.DataFrame:
    """Per-module values as a block x module-kind table (rows: blocks; columns: ``q``, ``k``, ...
    in ``kinds`` order, by default the order of first appearance)."""
    parsed = [block_and_module(n) for n in series.index]
    blocks = [b for b, _ in parsed]
    short = [m.replace("_proj", "") for _, m in parsed]
    grid = pd.Series(series.to_numpy(), index=pd.MultiIndex.from_arrays([blocks, short]))
    return grid.unstack()[list(kinds) if kinds is not None else list(dict.fromkeys(short))]


# --- what pruning saves at inference -----------------------------------------------------------


@dataclass
class PruningVariants:
    """Models to time, by name, with the LoRA modules each keeps, and the largest logit
    difference between pruning and zeroing the same modules (0 up to rounding)."""

    models: dict[str, torch.nn.Module]
    modules_left: dict[str, int]
    logit_difference: float


def pruning_variants(
    adapter: RepairAdapter,
    chat: torch.nn.Module,
    inputs: Mapping[str, torch.Tensor],
    k_check: int,
    ks: Iterable[int] = (),
) -> PruningVariants:
    """The adapter with SPLoRA's first k modules removed for real, for k = 0, ``k_check``,
    ``ks`` and all (the ``chat`` model); the released variant (``lora_B`` of the first
    ``k_check`` zeroed: same function, same cost); and the adapter merged into the weights.
    Checks on ``inputs`` that pruning and zeroing ``k_check`` modules give the same logits."""
    n = adapter.n_modules
    order = pick(adapter.scores, "SPLoRA", n)
    zeroed = adapter.fresh()
    AdapterSwitch(zeroed).apply("SPLoRA", order[:k_check])
    kept = sorted({k_check, *ks} - {0, n})
    pruned = {0: adapter.fresh(), **{k: adapter.fresh(order[:k]) for k in kept}, n: chat}
    with torch.no_grad():
        diff = (pruned[k_check](**inputs).logits - zeroed(**inputs).logits).abs().max().item()
    models = {f"pruned k={k}": m for k, m in pruned.items()}
    left = {f"pruned k={k}": n - k for k in pruned}
    zero_name = f"zeroed k={k_check} (released)"
    models[zero_name], left[zero_name] = zeroed, n
    models["merged into the weights"] = adapter.fresh().merge_and_unload()
    left["merged into the weights"] = 0
    return PruningVariants(models, left, diff)
