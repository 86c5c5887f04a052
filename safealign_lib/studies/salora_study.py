"""Notebook 03's study: SaLoRA next to plain LoRA on notebook 01's conditions and seeds.

:class:`Comparison` trains and evaluates both methods alike (the profile's LoRA rank, targets
and training settings, the same examples and seeds, one :class:`~safealign_lib.evaluation.
Evaluator`), measures SaLoRA's invariance and runs the ablations. The other functions turn the
method's analysis helpers (:mod:`safealign_lib.methods.salora`) into the notebook's tables and
printed lines. Figures are in :mod:`safealign_lib.studies.figures.salora`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
import torch
from peft import PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from safealign_lib import data, pool
from safealign_lib.adapters.finetune import TrainResult, add_lora, load_adapter, train
from safealign_lib.adapters.naming import block_and_module
from safealign_lib.config import LoraSettings, TrainSettings
from safealign_lib.course import cache
from safealign_lib.course.profiles import Profile, get_profile
from safealign_lib.evaluation import (
    Evaluator,
    answer_position_divergence,
    fmt_mean_sd,
    paired_differences,
    seed_stats,
    seed_table,
)
from safealign_lib.interp import activations, probes
from safealign_lib.methods import salora
from safealign_lib.methods.salora import LayerFeatures, SafetyModule
from safealign_lib.models.chat import ChatExample
from safealign_lib.models.generation import generate
from safealign_lib.models.loading import load_model
from safealign_lib.studies import conditions, testbed
from safealign_lib.studies.conditions import (
    INSTRUCT_CONDITIONS,
    benign_answer_rate,
    evaluate_condition,
    get_adapter,
    harmful_eval_prompts,
    train_settings,
    training_examples,
)

METRICS = ["refusal_rate", "first_token_refusal_prob", "utility"]
# the exact judge's share of harmful answers, and (instruction conditions only) the share of
# benign requests answered: the metrics of the benign_instruct criterion
EXTRA_METRICS = ["harmful_rate", "benign_answer_rate"]
BY = ["condition", "method"]
N_INVARIANCE = 16  # harmful prompts and task inputs each: the guarantee is for every x
# recorded names of the benign-regime ablations (section 6)
VARIANT_SLUGS = {
    "SaLoRA, decision-token X_h": "salora_decision",
    "SaLoRA, wrong-sign C": "salora_wrong_sign",
    "SaLoRA, no task init": "salora_no_task_init",
    "LoRA, q,v only": "lora_qv",
    "SaLoRA, q,v only": "salora_qv",
    "LoRA, reference regime": "lora_reference",
    "SaLoRA, reference regime": "salora_reference",
}


def lora_settings(profile: str, target_modules: Sequence[str] | None) -> LoraSettings | None:
    """The named profile's LoRA settings on other ``target_modules``, for
    ``notebook_setup(..., lora=...)``; ``None`` (keep the profile's) when none are given."""
    if not target_modules:
        return None
    return replace(get_profile(profile).lora, target_modules=tuple(target_modules))


def settings_line(profile: Profile) -> str:
    """The fine-tuning settings that LoRA and SaLoRA share, in one line."""
    lo, tr = profile.lora, profile.train
    return (
        f"LoRA r={lo.r} alpha={lo.alpha} on {list(lo.target_modules)}; {tr.steps} steps, "
        f"lr {tr.lr}, batch {tr.batch_size} — the same for LoRA and SaLoRA"
    )


def _where(name: str) -> dict[str, object]:
    layer, module = block_and_module(f"{name}.weight")
    return {"layer": layer, "module": module}


# --- section 2: the safety module ---------------------------------------------------------------


def describe_features(feats: Mapping[str, LayerFeatures], examples: Sequence[ChatExample]) -> None:
    """Print what was collected: the layers, one layer's X and W shapes, one example."""
    f = next(iter(feats.values()))
    print(
        f"{len(feats)} target layers, e.g. {f.name}: X_h is {tuple(f.x.shape)} "
        f"({f.n_tokens} response tokens x d_in={f.d_in}), W is {f.d_out} x {f.d_in}"
    )
    print("example:", examples[0].user, "->", examples[0].response)


def rank_summary(spectra: Mapping[str, torch.Tensor], energies: Sequence[float]) -> pd.DataFrame:
    """Per module type, the min and max over layers of the rank keeping each share of the
    energy of W·X_h."""
    rows = [
        {
            "module": _where(n)["module"],
            **{f"rank for {e:.0%}": salora.energy_rank(S, e) for e in energies},
        }
        for n, S in spectra.items()
    ]
    return pd.DataFrame(rows).groupby("module").agg(["min", "max"])


def describe_r_s(r_s: int, given: bool, energy: float, d_out: int) -> None:
    """Print the chosen r_s, how it was chosen and the share of the output space C removes."""
    how = "given" if given else f"max over layers of the rank keeping {energy:.0%} of the energy"
    print(
        f"r_s = {r_s} ({how}): C removes {r_s} of {d_out} output directions "
        f"({r_s / d_out:.0%}) per layer"
    )


def removed_table(
    model: PreTrainedModel,
    safety: SafetyModule,
    safety_feats: Mapping[str, LayerFeatures],
    task_feats: Mapping[str, LayerFeatures],
) -> pd.DataFrame:
    """Per module type (mean over layers): the share of the safety and of the task outputs
    that lies in U_C, next to a random r_s-dimensional subspace's expected share."""
    inside = {
        "safety outputs in U_C": salora.output_shares(model, safety, safety_feats),
        "task outputs in U_C": salora.output_shares(model, safety, task_feats),
    }
    rows = [
        {
            "module": _where(n)["module"],
            **{k: v[n] for k, v in inside.items()},
            "random subspace": safety.r_s / f.d_out,
        }
        for n, f in safety_feats.items()
    ]
    return pd.DataFrame(rows).groupby("module").mean()


def compare_with_module(
    build_C: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor],
    model: PreTrainedModel,
    safety_feats: Mapping[str, LayerFeatures],
    safety: SafetyModule,
) -> None:
    """Run a learner's ``build_C`` on the middle target layer and print how far its C is from
    the library's module (which never forms C)."""
    name = list(safety_feats)[len(safety_feats) // 2]
    W = dict(model.named_modules())[name].weight.detach().float().cpu()
    C = build_C(W, safety_feats[name].x, safety.r_s)
    U = safety.layers[name].U.cpu()
    print(
        f"{name}: max |C·U_C| = {float((C @ U).abs().max()):.2e}, "
        f"max |C − (I − U_C U_Cᵀ)| = {float((C - (torch.eye(len(U)) - U @ U.T)).abs().max()):.2e}"
    )


# --- sections 4 and 6: LoRA versus SaLoRA, ablations ----------------------------------------------


@dataclass(frozen=True)
class Regime:
    """Changes to the course's fine-tuning settings for an ablation: other ``targets``, the
    scale s = α/r set to 1 (``scale_one``), the learning rate divided by ``lr_divisor``, the
    loss on ``"all"`` tokens. SaLoRA's released script trains with s = 1, a small learning rate
    and the loss on all tokens: :data:`REFERENCE` with a divisor chosen in the notebook."""

    targets: tuple[str, ...] | None = None
    scale_one: bool = False
    lr_divisor: float = 1.0
    loss_on: str = "response"


@dataclass
class Comparison:
    """LoRA and SaLoRA trained and evaluated alike.

    ``chat`` is the original chat model (never trained: ablation modules are built on it),
    ``safety_feats`` / ``task_feats`` its features X_h / X_t, ``r_t`` the task-subspace rank
    of SaLoRA's initialisation. LoRA adapters come from notebook 01's cache (``retrain``
    ignores it). The invariance is measured on ``invariance_inputs``: harmful prompts and task
    inputs, since the guarantee holds for every input. The instruction-tuning conditions get
    their own X_t (``n_feature_samples`` of ``instruct_train``, collected on first use): the
    initialisation follows each condition's task data. The fine-tunes of :meth:`run`,
    :meth:`regime_ablations` and :meth:`ablations` run ``workers`` at a time (default: two on
    the CPU, one on an accelerator; :mod:`safealign_lib.pool`), with the same results.
    """

    profile: Profile
    tokenizer: PreTrainedTokenizerBase
    evaluator: Evaluator
    chat: PreTrainedModel
    safety_feats: Mapping[str, LayerFeatures]
    task_feats: Mapping[str, LayerFeatures]
    r_t: int = 32
    retrain: bool = False
    n_feature_samples: int = 128
    workers: int | None = None
    invariance_inputs: list[ChatExample] = field(init=False)
    # models :meth:`run` keeps for later sections, by (condition, seed, method)
    kept: dict[tuple[str, int, str], PeftModel] = field(init=False, default_factory=dict)
    _instruct_feats: dict[str, LayerFeatures] | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        harmful = harmful_eval_prompts("harmful10", self.profile)[:N_INVARIANCE]
        self.invariance_inputs = harmful + list(self.evaluator.task)[:N_INVARIANCE]
        if self.workers is None:
            self.workers = pool.default_workers(self.profile.device)

    def __getstate__(self) -> dict:
        # what a pool job needs: not the models kept for later sections
        return {**self.__dict__, "kept": {}}

    def fresh_chat(self) -> PreTrainedModel:
        """A new copy of the chat model (each fine-tune starts from one)."""
        P = self.profile
        return load_model(P.chat_model, dtype=P.dtype, device=P.device)

    def settings(
        self, condition: str, seed: int, regime: Regime | None = None
    ) -> tuple[LoraSettings, TrainSettings]:
        """The LoRA and training settings of ``condition`` and ``seed`` (the course's, or
        ``regime``'s changes to them)."""
        lora, settings = self.profile.lora, train_settings(condition, self.profile, seed)
        if regime is None:
            return lora, settings
        if regime.targets is not None:
            lora = replace(lora, target_modules=tuple(regime.targets))
        if regime.scale_one:
            lora = replace(lora, alpha=float(lora.r))
        lr = settings.lr / regime.lr_divisor
        return lora, replace(settings, lr=lr, loss_on=regime.loss_on)

    def evaluate(self, model: PreTrainedModel, condition: str) -> dict[str, float]:
        """``condition``'s evaluation (:func:`~safealign_lib.studies.conditions.
        evaluate_condition`): refusal rate and first-token refusal probability on its harmful
        prompts, utility on its task set, and the benign answer rate (for every condition: the
        criterion's guard against a method that refuses everything)."""
        summary = evaluate_condition(self.evaluator, model, condition, self.profile).summary
        if "benign_answer_rate" not in summary:
            summary["benign_answer_rate"] = benign_answer_rate(self.evaluator, model, self.profile)
        return summary

    def task_features(self, condition: str) -> Mapping[str, LayerFeatures]:
        """X_t for ``condition``'s initialisation: ``task_feats`` (dialogue summaries), or
        features of instruction requests for the instruction-tuning conditions."""
        if condition not in INSTRUCT_CONDITIONS:
            return self.task_feats
        if self._instruct_feats is None:
            exs = data.subsample(data.load_split("instruct_train"), self.n_feature_samples, seed=0)
            targets = list(self.profile.lora.target_modules)
            self._instruct_feats = salora.collect_layer_inputs(
                self.chat, self.tokenizer, exs, targets
            )
        return self._instruct_feats

    def train_lora(
        self, condition: str, seed: int, regime: Regime | None = None
    ) -> tuple[PeftModel, TrainResult]:
        """A plain LoRA fine-tune of a fresh chat model (to time it next to SaLoRA, or in
        another ``regime``)."""
        lora, settings = self.settings(condition, seed, regime)
        model = add_lora(self.fresh_chat(), lora, seed=seed)
        examples = training_examples(condition, self.profile, seed)
        return model, train(model, self.tokenizer, examples, settings)

    def train_salora(
        self,
        safety: SafetyModule,
        condition: str,
        seed: int,
        regime: Regime | None = None,
        **kw: str,
    ) -> tuple[PeftModel, TrainResult]:
        """A SaLoRA fine-tune of a fresh chat model (``kw``: ``init`` / ``sign`` ablations;
        ``regime``: other targets or training settings)."""
        lora, settings = self.settings(condition, seed, regime)
        return salora.train_salora(
            self.fresh_chat(),
            self.tokenizer,
            lora,
            safety,
            training_examples(condition, self.profile, seed),
            settings,
            seed=seed,
            task_feats=self.task_features(condition),
            r_t=self.r_t,
            desc=f"SaLoRA {condition} seed {seed}",
            **kw,
        )

    def invariance(self, model: PreTrainedModel, safety: SafetyModule) -> float:
        """max |U_Cᵀ(y(x) − W x − b)| over the target layers and the invariance inputs."""
        errors = salora.invariance_error(model, self.tokenizer, self.invariance_inputs, safety)
        return max(errors.values())

    def run(
        self,
        safety: SafetyModule,
        conditions: Sequence[str],
        seeds: Sequence[int],
        done: Mapping[tuple[str, int], tuple[PeftModel, TrainResult]] | None = None,
        keep: Sequence[tuple[str, int]] = (),
    ) -> tuple[pd.DataFrame, dict[tuple[str, int], float]]:
        """Every (condition, seed): notebook 01's LoRA adapter and a SaLoRA fine-tune, both
        evaluated; ``done`` holds SaLoRA runs already trained. Prints one line per pair. The
        models of the pairs in ``keep`` stay in :attr:`kept`.

        Returns the runs (one row per method, condition and seed) and SaLoRA's invariance
        error per (condition, seed).
        """
        done = done or {}
        for c in conditions:
            self.task_features(c)  # collected once here, not in every worker
        pairs = [(c, s) for c in conditions for s in seeds]
        jobs = [(self, safety, c, s, done.get((c, s)), (c, s) in keep) for c, s in pairs]
        rows, inv_err = [], {}
        for (c, s), (pair_rows, inv, models) in zip(
            pairs, pool.map_jobs(_pair_job, jobs, self.workers), strict=True
        ):
            rows += pair_rows
            inv_err[(c, s)] = inv
            if models is not None:
                self.kept.update({(c, s, "LoRA"): models[0], (c, s, "SaLoRA"): models[1]})
            print(f"{c:10s} seed {s}: " + " | ".join(_scores(r) for r in pair_rows))
        return pd.DataFrame(rows), inv_err

    def regime_ablations(
        self,
        safety: SafetyModule,
        decision: SafetyModule,
        runs: pd.DataFrame,
        condition: str,
        seeds: Sequence[int],
        reference: Regime,
        targets: Sequence[str] = ("q_proj", "v_proj"),
    ) -> tuple[pd.DataFrame, dict[str, PeftModel]]:
        """Why SaLoRA holds or not on ``condition`` (its paper's regime). One row per variant
        and seed: LoRA and SaLoRA (from ``runs``); SaLoRA with the ``decision`` module (X_h
        widened to the last prompt positions) on every seed; on the first seed only, SaLoRA
        with the wrong-sign C, SaLoRA without the task initialisation, LoRA and SaLoRA on
        ``targets`` only, and LoRA and SaLoRA in the
        ``reference`` regime (the released script's s, learning rate and loss).

        Returns the table and the first seed's models by variant (those :meth:`run` kept with
        ``keep=[(condition, seeds[0])]`` included).
        """
        s0 = seeds[0]
        cols = ["method", "seed", *METRICS, *EXTRA_METRICS]
        mine = runs[(runs.condition == condition) & runs.seed.isin(seeds)][cols]
        rows = [{"variant": r.method, **r.to_dict()} for _, r in mine.iterrows()]
        models = {m: self.kept[(condition, s0, m)] for m in ("LoRA", "SaLoRA")}
        qv = Regime(targets=tuple(targets))
        plan = [("SaLoRA, decision-token X_h", s, decision, None, {}) for s in seeds] + [
            ("SaLoRA, wrong-sign C", s0, safety, None, {"sign": "wrong"}),
            ("SaLoRA, no task init", s0, safety, None, {"init": "standard"}),
            ("LoRA, q,v only", s0, None, qv, {}),
            ("SaLoRA, q,v only", s0, safety, qv, {}),
            ("LoRA, reference regime", s0, None, reference, {}),
            ("SaLoRA, reference regime", s0, safety, reference, {}),
        ]
        self.task_features(condition)
        jobs = [
            (self, condition, s, module, regime, kw, s == s0) for _, s, module, regime, kw in plan
        ]
        done = pool.map_jobs(_variant_job, jobs, self.workers)
        for (variant, s, module, _, _), (summary, pm) in zip(plan, done, strict=True):
            method = "LoRA" if module is None else "SaLoRA"
            rows.append({"variant": variant, "method": method, "seed": s, **summary})
            if s == s0:
                models[variant] = pm
            print(
                f"{variant} (seed {s}): harmful rate {rows[-1]['harmful_rate']:.3f}, "
                f"utility {rows[-1]['utility']:.3f}"
            )
        return pd.DataFrame(rows), models

    def decision_module(
        self, examples: Sequence[ChatExample], prompt_positions: int, r_s: int
    ) -> SafetyModule:
        """SaLoRA's safety module from X_h widened to the last ``prompt_positions`` prompt
        positions of ``examples`` (the decision-token ablation), with rank ``r_s``."""
        targets = list(self.profile.lora.target_modules)
        feats = salora.collect_layer_inputs(
            self.chat, self.tokenizer, examples, targets, prompt_positions=prompt_positions
        )
        return salora.build_safety_module(self.chat, feats, r_s=r_s)

    def depth(
        self,
        models: Mapping[str, PreTrainedModel],
        condition: str,
        n_positions: int = 8,
        names: Sequence[str] = ("LoRA", "SaLoRA", "SaLoRA, decision-token X_h"),
    ) -> pd.DataFrame:
        """:func:`depth_table` of the ``names`` of ``models`` against the chat model,
        teacher-forced on the chat model's own greedy answers to ``condition``'s harmful
        prompts."""
        models = {n: models[n] for n in names}
        prompts = harmful_eval_prompts(condition, self.profile)
        answers = own_answers(self.chat, self.tokenizer, prompts, max_new_tokens=2 * n_positions)
        return depth_table(models, self.chat, self.tokenizer, answers, n_positions)

    def depth_seeds(
        self, condition: str, seeds: Sequence[int], n_positions: int = 8
    ) -> pd.DataFrame:
        """:meth:`depth` of LoRA and SaLoRA on every seed (the models :meth:`run` kept with
        ``keep=[(condition, s) for s in seeds]``), one ``seed`` column; the chat model's
        answers are generated once."""
        prompts = harmful_eval_prompts(condition, self.profile)
        answers = own_answers(self.chat, self.tokenizer, prompts, max_new_tokens=2 * n_positions)
        frames = [
            depth_table(
                {m: self.kept[(condition, s, m)] for m in ("LoRA", "SaLoRA")},
                self.chat,
                self.tokenizer,
                answers,
                n_positions,
            ).assign(seed=s)
            for s in seeds
        ]
        return pd.concat(frames, ignore_index=True)

    def ablations(
        self,
        safety: SafetyModule,
        runs: pd.DataFrame,
        invariance: Mapping[str, float],
        condition: str,
        seed: int,
        sweep: Sequence[int] = (),
    ) -> tuple[pd.DataFrame, dict[str, list[float]]]:
        """The ablation table on one (condition, seed): LoRA and SaLoRA from ``runs`` with
        their invariance errors ``invariance[method]``, then SaLoRA without the task
        initialisation, with the wrong-sign C, and at each other r_s of ``sweep``.

        Returns the table and the training losses of the two non-SaLoRA variants.
        """

        def ref(method: str) -> dict[str, float]:
            pick = (runs.method == method) & (runs.condition == condition) & (runs.seed == seed)
            return runs[pick].iloc[0][METRICS].to_dict()

        rows = [
            {"variant": "LoRA", "r_s": 0, **ref("LoRA"), "invariance_err": invariance["LoRA"]},
            {
                "variant": "SaLoRA",
                "r_s": safety.r_s,
                **ref("SaLoRA"),
                "invariance_err": invariance["SaLoRA"],
            },
        ]
        variants = [
            ("no task init", safety.r_s, {"init": "standard"}),
            ("wrong-sign C", safety.r_s, {"sign": "wrong"}),
        ] + [("SaLoRA", r, {}) for r in sweep if r != safety.r_s]
        modules = {safety.r_s: safety}
        for _, r, _ in variants:
            if r not in modules:
                modules[r] = salora.build_safety_module(self.chat, self.safety_feats, r_s=r)
        self.task_features(condition)
        jobs = [(self, modules[r], condition, seed, kw) for _, r, kw in variants]
        losses = {}
        done = pool.map_jobs(_ablation_job, jobs, self.workers)
        for (variant, r, _), (summary, curve, inv) in zip(variants, done, strict=True):
            if variant != "SaLoRA":
                losses[variant] = curve
            rows.append({"variant": variant, "r_s": r, **summary, "invariance_err": inv})
        return pd.DataFrame(rows), losses


def _pair_job(
    S: Comparison,
    safety: SafetyModule,
    condition: str,
    seed: int,
    done: tuple[PeftModel, TrainResult] | None,
    keep: bool,
) -> tuple[list[dict], float, tuple[PeftModel, PeftModel] | None]:
    """One (condition, seed) of :meth:`Comparison.run` (a :mod:`pool` job): the LoRA and
    SaLoRA rows, SaLoRA's invariance error, and both models when kept."""
    path, _ = get_adapter(condition, seed, S.profile, S.tokenizer, retrain=S.retrain)
    lora = load_adapter(S.fresh_chat(), path)
    where = {"condition": condition, "seed": seed}
    rows = [{"method": "LoRA", **where, **S.evaluate(lora, condition)}]
    pm, res = done if done is not None else S.train_salora(safety, condition, seed)
    inv = S.invariance(pm, safety)
    rows.append({"method": "SaLoRA", **where, **S.evaluate(pm, condition), "train_s": res.seconds})
    return rows, inv, (lora, pm) if keep else None


def _train_job(
    S: Comparison,
    module: SafetyModule | None,
    condition: str,
    seed: int,
    regime: Regime | None = None,
    kw: Mapping[str, str] | None = None,
) -> tuple[PeftModel, TrainResult]:
    """A LoRA (``module`` None) or SaLoRA fine-tune of a fresh chat model (a :mod:`pool` job)."""
    if module is None:
        return S.train_lora(condition, seed, regime)
    return S.train_salora(module, condition, seed, regime, **(kw or {}))


def _variant_job(
    S: Comparison,
    condition: str,
    seed: int,
    module: SafetyModule | None,
    regime: Regime | None,
    kw: Mapping[str, str],
    keep: bool,
) -> tuple[dict[str, float], PeftModel | None]:
    """One variant of :meth:`Comparison.regime_ablations` (a :mod:`pool` job): LoRA when
    ``module`` is None, else SaLoRA; its evaluation, and the model when kept."""
    pm, _ = _train_job(S, module, condition, seed, regime, kw)
    return S.evaluate(pm, condition), pm if keep else None


def _ablation_job(
    S: Comparison, module: SafetyModule, condition: str, seed: int, kw: Mapping[str, str]
) -> tuple[dict[str, float], list[float], float]:
    """One row of :meth:`Comparison.ablations` (a :mod:`pool` job): the evaluation, the loss
    curve and the invariance error of a SaLoRA variant."""
    pm, res = S.train_salora(module, condition, seed, **kw)
    return S.evaluate(pm, condition), res.losses, S.invariance(pm, module)


def _scores(row: Mapping[str, object]) -> str:
    return (
        f"{row['method']}: refusal {row['refusal_rate']:.3f}, "
        f"first-token {row['first_token_refusal_prob']:.3f}, utility {row['utility']:.3f}"
    )


def describe_training(
    condition: str, seed: int, lora_res: TrainResult, salora_res: TrainResult
) -> None:
    """Print both runs' training time and trainable parameters."""
    ratio = salora_res.seconds / lora_res.seconds
    print(
        f"{condition} seed {seed}: LoRA {lora_res.seconds:.1f} s, SaLoRA {salora_res.seconds:.1f} "
        f"s (ratio {ratio:.2f}); trainable parameters LoRA {lora_res.n_trainable:,} vs SaLoRA "
        f"{salora_res.n_trainable:,} of {lora_res.n_total:,} (C is a fixed buffer, not a "
        "parameter)"
    )


def results_table(
    runs: pd.DataFrame, reference: Mapping[str, float]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The 'mean ± sd' table per condition and method (plus the chat model's ``reference``
    row) and the table of means; prints the SaLoRA − LoRA differences paired by seed."""
    table = seed_table(runs, BY, METRICS, reference={"chat (before)": reference})
    judged = METRICS + [c for c in ("harmful_rate",) if c in runs]  # the exact judge's, if any
    mean = seed_stats(runs, BY, judged).xs("mean", axis=1, level=1)
    diffs = paired_differences(runs, "method", "SaLoRA", "LoRA", METRICS)
    for c, sub in diffs.groupby("condition", sort=False):
        print(
            f"{c}: SaLoRA − LoRA (paired by seed): "
            + ", ".join(f"{r.metric} {fmt_mean_sd(r['mean'], r.sd, 3)}" for _, r in sub.iterrows())
        )
    return table, mean


def condition_metrics(runs: pd.DataFrame, conditions: Sequence[str]) -> dict[str, float]:
    """The recorded per-condition means (and the harmful rate's sd) of both methods:
    ``harmful_rate_<m>_<c>`` (+ ``_sd``), ``utility_<m>_<c>``, ``first_token_refusal_prob_<m>_<c>``
    and, where it exists, ``benign_answer_rate_<m>_<c>``; ``m`` is lora or salora."""
    metrics = ["utility", "first_token_refusal_prob"] + [m for m in EXTRA_METRICS if m in runs]
    stats = seed_stats(runs[runs.condition.isin(conditions)], BY, metrics)
    out = {}
    for (c, method), row in stats.iterrows():
        m = method.lower()
        for k in metrics:
            if not np.isnan(row[(k, "mean")]):
                out[f"{k}_{m}_{c}"] = float(row[(k, "mean")])
        if "harmful_rate" in metrics:
            out[f"harmful_rate_{m}_{c}_sd"] = float(row[("harmful_rate", "std")])
    return out


def regime_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Mean ± sd over seeds (one seed: the value) per variant of
    :meth:`Comparison.regime_ablations`, in the order they ran, with the seed count."""
    metrics = ["harmful_rate", "utility", "benign_answer_rate", "first_token_refusal_prob"]
    out = seed_table(table, "variant", metrics, digits=3)
    n = table.groupby("variant", sort=False).seed.nunique()
    return out.loc[list(n.index)].assign(seeds=n)


def decision_differences(table: pd.DataFrame) -> pd.DataFrame:
    """The decision-token variant against LoRA and against SaLoRA, paired by seed: mean, sd and
    standard error of the differences in harmful rate and utility."""
    rows = []
    for control in ("LoRA", "SaLoRA"):
        sub = table[table.variant.isin([control, "SaLoRA, decision-token X_h"])]
        d = paired_differences(
            sub.assign(vs=f"decision-token − {control}"),
            "variant",
            "SaLoRA, decision-token X_h",
            control,
            ["harmful_rate", "utility"],
            by=("vs",),
        )
        rows.append(d)
    return pd.concat(rows, ignore_index=True).round(3)


def regime_metrics(table: pd.DataFrame, condition: str) -> dict[str, float]:
    """The ablations' recorded means: ``<metric>_<variant slug>_<condition>`` for the harmful
    rate and utility (plus the harmful rate's sd for the decision-token variant, which runs on
    every seed); slugs as in :data:`VARIANT_SLUGS`."""
    stats = seed_stats(table, "variant", ["harmful_rate", "utility"])
    out = {}
    for variant, slug in VARIANT_SLUGS.items():
        if variant not in stats.index:
            continue
        for m in ("harmful_rate", "utility"):
            out[f"{m}_{slug}_{condition}"] = float(stats.loc[variant, (m, "mean")])
        if (table.variant == variant).sum() > 1:
            out[f"harmful_rate_{slug}_{condition}_sd"] = float(
                stats.loc[variant, ("harmful_rate", "std")]
            )
    return out


def own_answers(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[ChatExample],
    max_new_tokens: int = 16,
) -> list[ChatExample]:
    """``prompts`` paired with ``model``'s own greedy answers (the text the depth measurement
    teacher-forces)."""
    texts = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, progress=False)
    return [replace(p, response=t) for p, t in zip(prompts, texts.texts, strict=True)]


def depth_table(
    models: Mapping[str, PreTrainedModel],
    reference: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    answers: Sequence[ChatExample],
    n_positions: int = 8,
) -> pd.DataFrame:
    """Per model and answer position: KL(reference ‖ model) and the probability the model gives
    the reference's own answer token, teacher-forced on ``answers``
    (:func:`~safealign_lib.evaluation.answer_position_divergence`)."""
    frames = [
        answer_position_divergence(reference, m, tokenizer, answers, n_positions).assign(model=name)
        for name, m in models.items()
    ]
    return pd.concat(frames, ignore_index=True)


def depth_summary(depth: pd.DataFrame, first: int = 1) -> pd.DataFrame:
    """Per model: the KL at the first ``first`` answer positions against the rest, and the share
    of the summed KL that those positions carry."""
    head = depth[depth.position < first].groupby("model", sort=False).kl.mean()
    tail = depth[depth.position >= first].groupby("model", sort=False).kl.mean()
    total = depth.groupby("model", sort=False).kl.sum()
    share = depth[depth.position < first].groupby("model", sort=False).kl.sum() / total
    return pd.DataFrame(
        {
            f"KL, first {first} position(s)": head,
            "KL, later positions": tail,
            f"share of the KL in the first {first}": share,
        }
    )


def depth_metrics(depth: pd.DataFrame, condition: str) -> dict[str, float]:
    """``kl_first_token_<slug>_<condition>`` (KL at the first answer position) and
    ``kl_later_tokens_<slug>_<condition>`` (mean KL over the later positions) per model."""
    slugs = {"LoRA": "lora", "SaLoRA": "salora", **VARIANT_SLUGS}
    out = {}
    for name, sub in depth.groupby("model", sort=False):
        slug = slugs[name]
        out[f"kl_first_token_{slug}_{condition}"] = float(sub.kl[sub.position == 0].iloc[0])
        out[f"kl_later_tokens_{slug}_{condition}"] = float(sub.kl[sub.position > 0].mean())
    return out


def depth_seed_metrics(depth: pd.DataFrame, condition: str) -> dict[str, float]:
    """:func:`depth_metrics` per seed: ``kl_first_token_<slug>_<condition>_seed<s>`` and
    ``kl_later_tokens_<slug>_<condition>_seed<s>`` for :meth:`Comparison.depth_seeds`."""
    out = {}
    for s, sub in depth.groupby("seed", sort=True):
        out |= {f"{k}_seed{s}": v for k, v in depth_metrics(sub, condition).items()}
    return out


def depth_peaks(depth: pd.DataFrame) -> pd.DataFrame:
    """Per model and seed of :meth:`Comparison.depth_seeds`: the answer position after the
    first where the KL is largest, its KL, the answers' own token there and the fine-tune's
    most likely token there."""
    later = depth[depth.position > 0]
    rows = later.loc[later.groupby(["model", "seed"], sort=False).kl.idxmax()]
    return rows[["model", "seed", "position", "kl", "token", "top_token_model"]].reset_index(
        drop=True
    )


def final_losses(curves: Mapping[str, Sequence[float]], last: int = 10) -> dict[str, float]:
    """Mean training loss over the ``last`` steps of each curve."""
    return {k: round(float(np.mean(v[-last:])), 3) for k, v in curves.items()}


# --- section 5: the limit of the guarantee ----------------------------------------------------


def drift_table(
    models: Mapping[str, PreTrainedModel],
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[ChatExample],
    before: Mapping[str, LayerFeatures],
) -> pd.DataFrame:
    """One row per method and target layer: how far the layer's inputs on ``examples`` moved
    from ``before`` (the original model's features), ‖X_after − X_before‖ / ‖X_before‖."""
    targets = sorted({n.rsplit(".", 1)[-1] for n in before})
    rows = []
    for method, model in models.items():
        after = salora.collect_layer_inputs(model, tokenizer, examples, targets)
        for n, v in salora.feature_drift(before, after).items():
            rows.append({"method": method, **_where(n), "drift": v})
    return pd.DataFrame(rows)


def drift_summary(drift: pd.DataFrame) -> pd.DataFrame:
    """Print the drift of layer 0's q/k/v (they read the embeddings, which no adapter
    touches) and return the mean drift per layer and method."""
    first = drift[(drift.layer == 0) & (drift.module != "o_proj")].drift.abs().max()
    print(f"layer 0 q/k/v read the embeddings, which no adapter touches: drift {first:.1e}")
    return drift.pivot_table(index="layer", columns="method", values="drift")


# --- section 7: probe transfer ----------------------------------------------------------------


def probe_prompts(profile: Profile) -> list[ChatExample]:
    """Held-out harmful then benign prompts (``n_eval`` each), labelled by ``meta["harmful"]``."""
    return (
        data.load_split("harmful_heldout")[: profile.n_eval]
        + data.load_split("benign_heldout")[: profile.n_eval]
    )


def probe_transfer_table(
    models: Mapping[str, PreTrainedModel],
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[ChatExample],
) -> pd.DataFrame:
    """Per layer: probes fit on the first model's residual stream (the aligned one), their
    accuracy on each other model's features (``acc_target``) and a probe refit on those
    features (``acc_refit``). Notebook 02's protocol, SaLoRA §3.2."""
    acts = {
        k: activations.capture_activations(m, tokenizer, prompts, sites=["resid"], progress=False)
        for k, m in models.items()
    }
    source, *targets = acts
    split = probes.split_indices(acts[source].labels, seed=0)
    refit = {
        k: probes.probe_accuracy(acts[k], split=split, cv=0)[["layer", "acc_heldout"]].rename(
            columns={"acc_heldout": "acc_refit"}
        )
        for k in targets
    }
    transfer = pd.concat(
        [
            probes.probe_transfer(acts[source], acts[k], split=split)
            .assign(model=k)
            .merge(refit[k], on="layer")
            for k in targets
        ]
    )
    pt = transfer.pivot_table(index="layer", columns="model", values=["acc_target", "acc_refit"])
    pt.insert(0, ("acc_source", source), transfer.groupby("layer").acc_source.first())
    return pt


# --- section 9: the paper beside the miniature ------------------------------------------------


def paper_table(
    mean: pd.DataFrame,
    chat_before: Mapping[str, float],
    results: tuple[TrainResult, TrainResult],
    safety: SafetyModule,
    t_prep: float,
    invariance_max: float,
    condition: str = "harmful10",
) -> pd.DataFrame:
    """The paper's numbers (Llama-2-7b-chat, from a secondary source) next to this run's:
    ``results`` are the (LoRA, SaLoRA) runs timed one after the other, ``t_prep`` the seconds of
    feature collection and SVD."""
    lora_res, salora_res = results
    m = mean.loc[condition]
    d_out = next(iter(safety.layers.values())).U.shape[0]

    def nr(v: float) -> str:  # the keyword judge's non-refusal rate
        return f"{1 - v:.0%}"

    rows = [
        [
            "harmful rate: chat → LoRA → SaLoRA",
            "0% → 23.7% → 3.5%",
            (
                f"exact judge: {chat_before['harmful_rate']:.0%} → "
                f"{m.loc['LoRA', 'harmful_rate']:.0%} → {m.loc['SaLoRA', 'harmful_rate']:.0%} "
                f"({condition})"
                if "harmful_rate" in m.columns and "harmful_rate" in chat_before
                else "no exact judge on this profile"
            ),
        ],
        [
            "keyword non-refusal rate: chat → LoRA → SaLoRA",
            "—",
            f"{nr(chat_before['refusal_rate'])} → {nr(m.loc['LoRA', 'refusal_rate'])} → "
            f"{nr(m.loc['SaLoRA', 'refusal_rate'])} ({condition})",
        ],
        [
            "utility: LoRA vs SaLoRA",
            "59.2 vs 62.9 (commonsense avg.)",
            f"{m.loc['LoRA', 'utility']:.3f} vs {m.loc['SaLoRA', 'utility']:.3f} "
            f"(ROUGE-L, {condition})",
        ],
        [
            "training time SaLoRA / LoRA",
            "2.98 h / 2.95 h = 1.01 (+0.12 h preprocessing)",
            f"{salora_res.seconds / lora_res.seconds:.2f} (+{t_prep:.1f} s preprocessing)",
        ],
        [
            "trainable parameters",
            "16.8M, same as LoRA",
            f"{salora_res.n_trainable:,}, same as LoRA ({lora_res.n_trainable:,})",
        ],
        [
            "r_s / layer width",
            "32 / 4096 (0.8%)",
            f"{safety.r_s} / {d_out} ({safety.r_s / d_out:.0%})",
        ],
        [
            "invariance U_Cᵀy = U_CᵀWx",
            "by construction (not reported)",
            f"max error {invariance_max:.1e}",
        ],
    ]
    columns = ["quantity", "paper (Llama-2-7b-chat)", "miniature (organism)"]
    return pd.DataFrame(rows, columns=columns)


# --- SaLoRA on the testbed (section 4b): the one criterion, every verdict seed -------------------

# SaLoRA as its paper builds it, and without the task-specific initialisation (peft's A random,
# B = 0): the ablation that tells whether the initialisation or the projector drives the result
TESTBED_VARIANTS = {"SaLoRA": "task", "SaLoRA, no task init": "standard"}
TESTBED_KEYS = {"LoRA": "lora", "SaLoRA": "salora", "SaLoRA, no task init": "salora_no_task_init"}


def _tensor_digest(tensors: Sequence[torch.Tensor]) -> str:
    """A digest of tensors' values (a cache key for features and safety modules)."""
    import hashlib

    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


def testbed_runs(
    profile: Profile,
    tokenizer: PreTrainedTokenizerBase,
    evaluator: Evaluator,
    safety: SafetyModule,
    task_feats: Mapping[str, LayerFeatures],
    r_t: int,
    seeds: Sequence[int] | None = None,
    split: str = "test",
    workers: int | None = None,
) -> pd.DataFrame:
    """SaLoRA (:data:`TESTBED_VARIANTS`) on every testbed condition and verdict seed, trained
    with the testbed's recipe on the same examples and seeds as its LoRA adapters, evaluated on
    ``split`` (:func:`~safealign_lib.studies.testbed.evaluate`). One row per (condition, seed,
    method) with ``train_s``. Cached under ``build/`` by a key of the LoRA adapters' keys, the
    safety module, the task features, the settings and the code."""
    seeds = profile.verdict_seeds if seeds is None else seeds
    units = [(c, s, m) for c in testbed.TESTBED_CONDITIONS for s in seeds for m in TESTBED_VARIANTS]
    spec = {
        "adapters": [conditions.adapter_key(c, s, profile) for c, s, _ in units],
        "units": units,
        "split": split,
        "safety": [safety.r_s, _tensor_digest([v.U for v in safety.layers.values()])],
        "task": _tensor_digest([f.x for f in task_feats.values() if f.x is not None]),
        "r_t": r_t,
        "eval": [profile.n_eval, profile.n_task_eval, evaluator.judge, evaluator.max_new_tokens],
        "code": cache.source_digest(salora, testbed, conditions),
    }

    def compute() -> tuple[pd.DataFrame]:
        jobs = [(profile, tokenizer, evaluator, safety, task_feats, r_t, *u, split) for u in units]
        rows = pool.map_jobs(_testbed_job, jobs, workers, profile.device)
        return (pd.DataFrame(rows),)

    folder = cache.folder_for(profile.name, "testbed_salora", spec)
    return cache.cached_tables(folder, ("runs",), compute)[0]


def _testbed_job(
    profile: Profile,
    tokenizer: PreTrainedTokenizerBase,
    evaluator: Evaluator,
    safety: SafetyModule,
    task_feats: Mapping[str, LayerFeatures],
    r_t: int,
    condition: str,
    seed: int,
    method: str,
    split: str,
) -> dict[str, float]:
    """One SaLoRA fine-tune of :func:`testbed_runs` and its evaluation (a :mod:`pool` job)."""
    model, res = salora.train_salora(
        load_model(profile.chat_model, dtype=profile.dtype, device=profile.device),
        tokenizer,
        conditions.lora_settings(condition, profile),
        safety,
        training_examples(condition, profile, seed),
        train_settings(condition, profile, seed),
        seed=seed,
        task_feats=task_feats,
        r_t=r_t,
        init=TESTBED_VARIANTS[method],
        desc=f"{method} {condition} seed {seed}",
    )
    summary, _ = testbed.evaluate(evaluator, model, profile, split)
    return {
        "condition": condition,
        "seed": seed,
        "method": method,
        **summary,
        "train_s": res.seconds,
    }
