"""Notebook 07's synthesis: what the miniature showed, per method and regime.

Everything here reads the metrics that notebooks 01–05 recorded in one run (the same
``metrics.json``); nothing is trained or evaluated again, and no number is typed in except the
papers' own, which are quoted as the papers (or their secondary sources) report them.

The per-seed values behind each verdict are written here too (:func:`salora_inputs` for
notebook 03, :func:`selection_inputs` for notebook 05), so that the keys notebook 07 reads to
recompute the verdicts through the one criterion with the learner's ``paired_t``
(:func:`recomputed_verdicts`) are spelled in one place.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import fields

import pandas as pd

from safealign_lib.course import metrics_io
from safealign_lib.evaluation.criterion import Criterion, PairedT, judge_table
from safealign_lib.evaluation.tables import fmt_mean_sd

NEEDED = ("01", "02", "03", "05", "06")  # the notebooks whose results this synthesis reads
PAPER_REGIMES = ("benign_instruct", "mixed")  # the papers' own (instruction-tuning) regimes
STRESS = ("harmful10", "harmful100")  # explicit harmful data: outside the papers' claims
EROSION = ("benign", "benign_instruct", "mixed", "identity_shift", "harmful10", "harmful100")
# method -> (notebook, metric-key name, the regimes it is tested on)
METHODS = {
    "SaLoRA": ("03", "salora", ("benign_instruct", *STRESS)),
    "Safe LoRA": ("05", "safelora", PAPER_REGIMES),
    "SPLoRA (exact k)": ("05", "splora", PAPER_REGIMES),
    "SPLoRA (as released)": ("05", "splora_released", PAPER_REGIMES),
}
# The papers' numbers at 7B scale, as docs/methods.md quotes them (harmful rates).
PAPER = pd.DataFrame(
    [
        ("Qi et al. 2024", "Llama-2-7b-chat, benign Alpaca, full fine-tune", "0.3% → 16.1%"),
        ("Qi et al. 2024", "Llama-2-7b-chat, 10 harmful examples", "0.3% → 50.0%"),
        ("Qi et al. 2024", "Llama-2-7b-chat, 100 harmful examples", "0.3% → 80.0%"),
        ("SaLoRA (secondary source)", "Llama-2-7b-chat, Alpaca: LoRA → SaLoRA", "23.7% → 3.5%"),
    ],
    columns=["paper", "setting", "harmful rate"],
)


def check_metrics(metrics: Mapping[str, Mapping[str, float]], profile: str) -> None:
    """Raise a clear error if a notebook this synthesis reads has not recorded its metrics."""
    missing = [n for n in NEEDED if n not in metrics]
    if missing:
        raise RuntimeError(
            f"The metrics file has no results of notebook(s) {', '.join(missing)}. Run them first "
            f"with the same profile and metrics file, e.g. `safealign course --profile {profile} "
            f"--only {' '.join(NEEDED)}`, then rerun this notebook."
        )


def load_metrics(metrics_file: str | None, profile: str) -> dict[str, dict[str, float]]:
    """The run's metrics (``metrics_file``; None: build/metrics.json), checked by
    :func:`check_metrics`."""
    metrics = metrics_io.load(metrics_file, must_exist=True)
    check_metrics(metrics, profile)
    return metrics


def _get(metrics: Mapping[str, Mapping[str, float]], nb: str, key: str) -> float:
    return float(metrics.get(nb, {}).get(key, math.nan))


def _mean_sd(metrics: Mapping[str, Mapping[str, float]], nb: str, key: str) -> str:
    mean, sd = _get(metrics, nb, key), _get(metrics, nb, f"{key}_sd")
    if math.isnan(mean):
        return "—"
    return fmt_mean_sd(mean, sd, 3) if not math.isnan(sd) else f"{mean:.3f}"


def erosion_table(metrics: Mapping[str, Mapping[str, float]]) -> pd.DataFrame:
    """Notebook 01: plain LoRA per condition — the exact judge's harmful rate (mean ± sd where
    recorded), the keyword refusal rate and utility; the chat model first."""
    rows = [
        {
            "condition": "chat (no fine-tune)",
            "harmful rate": _mean_sd(metrics, "01", "harmful_rate_chat"),
        }
    ]
    for c in EROSION:
        rows.append(
            {
                "condition": c,
                "harmful rate": _mean_sd(metrics, "01", f"harmful_rate_{c}"),
                "keyword refusal rate, harmful prompts": _get(metrics, "01", f"refusal_rate_{c}"),
                "utility": _get(metrics, "01", f"utility_{c}"),
            }
        )
    return pd.DataFrame(rows).set_index("condition").round(3)


def _k(metrics: Mapping[str, Mapping[str, float]], nb: str, slug: str) -> str:
    """The number of modules chosen on validation (module-selecting methods only)."""
    k = _get(metrics, nb, f"k_own_{slug}")
    return "—" if math.isnan(k) else str(int(k))


_LABEL = {1: "holds", 0: "not shown", -1: "void", -2: "worse"}


def _verdict(metrics: Mapping[str, Mapping[str, float]], nb: str, slug: str) -> str:
    return _LABEL.get(_get(metrics, nb, f"verdict_{slug}"), "—")


def methods_table(metrics: Mapping[str, Mapping[str, float]]) -> pd.DataFrame:
    """Each method in each regime it was tested on: harmful rate and utility of LoRA and of the
    method (mean ± sd over seeds), the random-k baseline where the method selects modules, and
    the pre-declared verdict in the papers' regimes."""
    rows = []
    for method, (nb, slug, regimes) in METHODS.items():
        for c in regimes:
            paper = c in PAPER_REGIMES
            rows.append(
                {
                    "method": method,
                    "regime": c + ("" if paper else " (stress test)"),
                    "LoRA harmful rate": _mean_sd(metrics, nb, f"harmful_rate_lora_{c}"),
                    "method harmful rate": _mean_sd(metrics, nb, f"harmful_rate_{slug}_{c}"),
                    "random-k harmful rate": _mean_sd(
                        metrics, nb, f"harmful_rate_randomk_{slug}_{c}"
                    ),
                    "k": _k(metrics, nb, slug),
                    "LoRA utility": _get(metrics, nb, f"utility_lora_{c}"),
                    "method utility": _get(metrics, nb, f"utility_{slug}_{c}"),
                    "verdict": _verdict(metrics, nb, slug) if paper else "—",
                }
            )
    return pd.DataFrame(rows).set_index(["method", "regime"]).round(3)


TESTBED = ("skill", "skill_mixed")  # studies/testbed.py: the conditions a repair can be seen on
# method -> (notebook, metric-key name, verdict key, k key) of the testbed's verdicts (the one
# criterion): notebooks 03 and 05 suffix theirs with "_testbed"; notebook 06's are the issue's
TESTBED_METHODS = {
    "SaLoRA": ("03", "salora", "verdict_salora_testbed", None),
    "SaLoRA, no task init": (
        "03",
        "salora_no_task_init",
        "verdict_salora_no_task_init_testbed",
        None,
    ),
    "Safe LoRA": ("05", "safelora", "verdict_safelora_testbed", "k_testbed_safelora"),
    "SPLoRA (exact k)": ("05", "splora", "verdict_splora_testbed", "k_testbed_splora"),
    "SPLoRA (as released)": (
        "05",
        "splora_released",
        "verdict_splora_released_testbed",
        "k_testbed_splora_released",
    ),
    "safety data": ("06", "safety_data", "verdict_safety_data", None),
    "recovery examples": ("06", "recovery", "verdict_recovery", None),
    "constrained objective": ("06", "constrained", "verdict_constrained", None),
    "conditional steering": ("06", "steer_conditional", "verdict_steer_conditional", None),
    "steering always": ("06", "steer_always", "verdict_steer_always", None),
    "oracle k": ("06", "oracle_k", "verdict_oracle_k", "k_oracle"),
}


def testbed_table(metrics: Mapping[str, Mapping[str, float]]) -> pd.DataFrame:
    """Each method on each testbed condition (notebooks 03, 05 and 06, the one criterion):
    whether the condition is a valid testbed, the chat model's and LoRA's utility, LoRA's and
    the method's harmful rate (mean ± sd), random modules' (selections), k and the verdict."""
    rows = []
    for method, (nb, slug, vkey, kkey) in TESTBED_METHODS.items():
        for c in TESTBED:
            if f"harmful_rate_{slug}_{c}" not in metrics.get(nb, {}):
                continue
            k = _get(metrics, nb, kkey) if kkey else math.nan
            rows.append(
                {
                    "method": method,
                    "condition": c,
                    "valid testbed": {1.0: "yes", 0.0: "no"}.get(
                        _get(metrics, nb, f"testbed_{c}"), "—"
                    ),
                    "chat utility": _get(metrics, nb, f"utility_chat_{c}"),
                    "LoRA harmful rate": _mean_sd(metrics, nb, f"harmful_rate_lora_{c}"),
                    "method harmful rate": _mean_sd(metrics, nb, f"harmful_rate_{slug}_{c}"),
                    "random-k harmful rate": _mean_sd(
                        metrics, nb, f"harmful_rate_randomk_{slug}_{c}"
                    ),
                    "LoRA utility": _get(metrics, nb, f"utility_lora_{c}"),
                    "method utility": _get(metrics, nb, f"utility_{slug}_{c}"),
                    "k": "—" if math.isnan(k) else str(int(k)),
                    "verdict": _LABEL.get(_get(metrics, nb, vkey), "—"),
                }
            )
    if not rows:
        return pd.DataFrame()
    return pd.DataFrame(rows).set_index(["method", "condition"]).round(3)


# notebook 06's methods (method -> metric-key name), in its table's order
KEEP_SAFETY = {
    "safety data": "safety_data",
    "recovery examples": "recovery",
    "constrained objective": "constrained",
    "conditional steering": "steer_conditional",
    "steering always": "steer_always",
    "oracle k (an upper bound)": "oracle_k",
}


def keep_safety_table(
    metrics: Mapping[str, Mapping[str, float]], condition: str = "skill_mixed"
) -> pd.DataFrame:
    """Notebook 06 in one table: per method, the verdict, the harmful rate (mean ± sd) on held-out
    and on unseen harmful tasks, utility and benign answers beside LoRA's, and the training time
    as a ratio to plain LoRA's; the chat model and LoRA as the first rows. Empty when notebook
    06 recorded no testbed (hub profiles)."""
    m = metrics.get("06", {})
    c = condition
    if f"harmful_rate_lora_{c}" not in m:
        return pd.DataFrame()
    rows = [
        {
            "method": "chat model (no fine-tune)",
            "harmful rate": _mean_sd(metrics, "06", f"harmful_rate_chat_{c}"),
            "unseen tasks": _get(metrics, "06", "harmful_rate_unseen_chat"),
            "utility": _get(metrics, "06", f"utility_chat_{c}"),
            "benign answers": _get(metrics, "06", f"benign_answer_rate_chat_{c}"),
            "training time vs LoRA": math.nan,
            "verdict": "reference",
        },
        {
            "method": "plain LoRA",
            "harmful rate": _mean_sd(metrics, "06", f"harmful_rate_lora_{c}"),
            "unseen tasks": _get(metrics, "06", f"harmful_rate_unseen_lora_{c}"),
            "utility": _get(metrics, "06", f"utility_lora_{c}"),
            "benign answers": _get(metrics, "06", f"benign_answer_rate_lora_{c}"),
            "training time vs LoRA": 1.0,
            "verdict": "reference",
        },
    ]
    for name, slug in KEEP_SAFETY.items():
        rows.append(
            {
                "method": name,
                "harmful rate": _mean_sd(metrics, "06", f"harmful_rate_{slug}_{c}"),
                "unseen tasks": _get(metrics, "06", f"harmful_rate_unseen_{slug}_{c}"),
                "utility": _get(metrics, "06", f"utility_{slug}_{c}"),
                "benign answers": _get(metrics, "06", f"benign_answer_rate_{slug}_{c}"),
                "training time vs LoRA": _get(metrics, "06", f"train_time_ratio_{slug}_vs_lora"),
                "verdict": _LABEL.get(_get(metrics, "06", f"verdict_{slug}"), "—"),
            }
        )
    return pd.DataFrame(rows).set_index("method").round(3)


def verdict_keys(metrics: Mapping[str, Mapping[str, float]]) -> list[tuple[str, str]]:
    """(notebook, key) of every recorded verdict: the papers' regimes (``verdict_<m>``) and the
    testbed's (the one criterion's codes: ``verdict_<m>_testbed`` in notebooks 03 and 05,
    notebook 06's ``verdict_<m>``)."""
    out = []
    for nb, slug, _ in METHODS.values():
        for key in (f"verdict_{slug}", f"verdict_{slug}_testbed"):
            if key in metrics.get(nb, {}) and (nb, key) not in out:
                out.append((nb, key))
    for nb, _, key, _ in TESTBED_METHODS.values():
        if key in metrics.get(nb, {}) and (nb, key) not in out:
            out.append((nb, key))
    return out


def verdict_counts(metrics: Mapping[str, Mapping[str, float]]) -> dict[str, int]:
    """How many of the pre-declared tests were run, and how many held, were not shown, made
    things worse (the testbed's criterion has that outcome) and were void. ``n_failed`` is
    ``n_not_shown + n_worse``."""
    values = [_get(metrics, nb, key) for nb, key in verdict_keys(metrics)]
    counts = {
        "n_verdicts": len(values),
        "n_held": sum(v == 1 for v in values),
        "n_not_shown": sum(v == 0 for v in values),
        "n_worse": sum(v == -2 for v in values),
        "n_void": sum(v == -1 for v in values),
    }
    counts["n_failed"] = counts["n_not_shown"] + counts["n_worse"]
    return counts


# --- the per-seed values behind each verdict, recorded by notebooks 03 and 05 -------------------

SEED_QUANTITIES = ("harmful_rate", "utility", "benign_answer_rate")  # what a criterion reads
SALORA_KEYS = {"LoRA": "lora", "SaLoRA": "salora"}  # notebook 03's methods in metric keys


def seed_key(quantity: str, method: str, condition: str, seed: int) -> str:
    """The metric key of one seed's value, e.g. ``harmful_rate_lora_mixed_seed0``."""
    return f"{quantity}_{method}_{condition}_seed{int(seed)}"


def seed_metrics(
    runs: pd.DataFrame, key: Mapping[str, str], quantities: tuple[str, ...] = SEED_QUANTITIES
) -> dict[str, float]:
    """One key per row of ``runs`` (``method``, ``condition``, ``seed``) and quantity, the method
    spelled by ``key``; a random-k row (method ``"random <m>"``) gives its harmful rate and
    utility (what the criterion compares with random modules), as
    ``<quantity>_randomk_<key[m]>_<condition>_seed<s>``. A quantity the runs lack (no harm
    judge: no harmful rate) or that is NaN there gives no key."""
    out = {}
    for _, r in runs.iterrows():
        method = str(r["method"])
        if method.startswith("random "):
            slug = f"randomk_{key[method.removeprefix('random ')]}"
            names = dict.fromkeys(("harmful_rate", "utility"), slug)
        else:
            names = dict.fromkeys(quantities, key[method])
        for q, slug in names.items():
            if q in r and not pd.isna(r[q]):
                out[seed_key(q, slug, r.condition, r.seed)] = float(r[q])
    return out


def salora_inputs(verdict: int, runs: pd.DataFrame, condition: str) -> dict[str, float]:
    """Notebook 03's ``verdict_salora`` and the per-seed values behind it: LoRA's and SaLoRA's
    harmful rate, utility and benign answer rate on ``condition`` (the paper's regime). The
    criterion's settings are recorded as ``criterion_one_*``."""
    sub = runs[runs.condition == condition]
    return {"verdict_salora": int(verdict), **seed_metrics(sub, SALORA_KEYS)}


def selection_inputs(
    test: pd.DataFrame, randomk: pd.DataFrame, key: Mapping[str, str]
) -> dict[str, float]:
    """Notebook 05's per-seed values behind its section-7 verdicts: LoRA's and each selection's
    harmful rate, utility and benign answer rate (``test``) and the random-k harmful rates and
    utilities (``randomk``). The criterion's settings are recorded as ``criterion_one_*``."""
    return {**seed_metrics(test, key), **seed_metrics(randomk, key)}


def _seeds(m: Mapping[str, float], method: str, condition: str) -> list[int]:
    pattern = re.compile(rf"harmful_rate_{method}_{condition}_seed(\d+)")
    return sorted(int(x.group(1)) for k in m if (x := pattern.fullmatch(k)))


def _units(m: Mapping[str, float], regimes: tuple[str, ...]) -> list[tuple[str, int]]:
    """The (regime, seed) pairs of the papers' regimes among ``regimes`` with recorded values;
    ``KeyError`` when there are none (a run from before the per-seed values were recorded)."""
    units = [(c, s) for c in regimes if c in PAPER_REGIMES for s in _seeds(m, "lora", c)]
    if not units:
        raise KeyError("no per-seed values")
    return units


def _runs(
    m: Mapping[str, float],
    units: list[tuple[str, int]],
    key: Mapping[str, str],
    quantities: tuple[str, ...] = SEED_QUANTITIES,
) -> pd.DataFrame:
    """The recorded per-seed ``quantities`` as the criteria's table: one row per method
    (``key``: the table's name -> the metric keys' spelling), condition and seed."""
    return pd.DataFrame(
        [
            {
                "method": name,
                "condition": c,
                "seed": s,
                **{q: m[seed_key(q, slug, c, s)] for q in quantities},
            }
            for name, slug in key.items()
            for c, s in units
        ]
    )


def _criterion(m: Mapping[str, float]) -> Criterion:
    """The one criterion with the settings the notebook recorded (``criterion_one_*``);
    ``KeyError`` when a run recorded none (from before the course had one criterion)."""
    return Criterion(**{f.name: m[f"criterion_one_{f.name}"] for f in fields(Criterion)})


def _valid(m: Mapping[str, float], runs: pd.DataFrame) -> dict[str, bool]:
    """Whether each regime of ``runs`` could tell a repair from deleting the adapter, as the
    notebook recorded it (``regime_valid_<c>``)."""
    return {c: bool(m[f"regime_valid_{c}"]) for c in runs.condition.unique()}


def _salora_verdict(m: Mapping[str, float], regimes: tuple[str, ...], fn: PairedT) -> int:
    """Notebook 03's paper-regime verdict, recomputed through the one criterion with ``fn`` as
    its paired test."""
    runs = _runs(m, _units(m, regimes), SALORA_KEYS)
    valid = _valid(m, runs)
    return int(judge_table(runs, ["SaLoRA"], _criterion(m), valid, paired=fn).code.iloc[0])


def _selection_verdict(
    m: Mapping[str, float], regimes: tuple[str, ...], slug: str, fn: PairedT
) -> int:
    """Notebook 05's paper-regime verdict of one selection, recomputed through the one
    criterion with ``fn`` as its paired test, on the units (regime, seed) of the papers'
    regimes pooled, against random modules at the recorded k."""
    units = _units(m, regimes)
    test = _runs(m, units, {"LoRA": "lora", slug: slug})
    randomk = _runs(m, units, {f"random {slug}": f"randomk_{slug}"}, ("harmful_rate", "utility"))
    randomk["benign_answer_rate"] = math.nan  # the criterion compares random modules on two
    valid = _valid(m, test)
    k = {slug: int(m[f"k_own_{slug}"])}
    table = judge_table(test, [slug], _criterion(m), valid, randomk=randomk, k=k, paired=fn)
    return int(table.code.iloc[0])


def recomputed_verdicts(metrics: Mapping[str, Mapping[str, float]], fn: PairedT) -> pd.DataFrame:
    """Every paper-regime verdict notebooks 03 and 05 recorded, beside the same verdict
    recomputed through the one criterion (:mod:`safealign_lib.evaluation.criterion`) from the
    recorded per-seed values and settings, with ``fn`` (the exercise's ``paired_t``) as its
    paired test. ``agree`` is False where they differ; a verdict whose per-seed values were not
    recorded (a run from before they were) shows "—"."""
    rows = []
    for method, (nb, slug, regimes) in METHODS.items():
        m = metrics.get(nb, {})
        if f"verdict_{slug}" not in m:
            continue
        try:
            if slug == "salora":
                again = _salora_verdict(m, regimes, fn)
            else:
                again = _selection_verdict(m, regimes, slug, fn)
        except KeyError:
            again = None
        recorded = int(m[f"verdict_{slug}"])
        rows.append(
            {
                "method": method,
                "regime": " + ".join(r for r in regimes if r in PAPER_REGIMES),
                "recorded": _LABEL[recorded],
                "recomputed": "—" if again is None else _LABEL[int(again)],
                "agree": again is not None and int(again) == recorded,
            }
        )
    columns = ["method", "regime", "recorded", "recomputed", "agree"]
    return pd.DataFrame(rows, columns=columns).set_index("method")


def direction_repair(metrics: Mapping[str, Mapping[str, float]]) -> pd.DataFrame:
    """Notebook 02's repair: the chat model's refusal direction added back to the harmful100
    fine-tunes (first-token refusal probability), what ablating it does to the chat model, and
    what adding it does to benign prompts (why it cannot be added everywhere)."""
    m = metrics.get("02", {})
    rows = [
        ("chat model: keyword refusal rate", m.get("refusal_rate_chat")),
        ("chat model, refusal direction ablated", m.get("refusal_rate_chat_ablated")),
        (
            "harmful100 fine-tune: first-token refusal probability",
            m.get("first_token_refusal_prob_harmful100"),
        ),
        (
            "… with the direction added back",
            m.get("first_token_refusal_prob_harmful100_direction_added"),
        ),
        ("chat model on benign prompts: keyword refusal rate", m.get("refusal_rate_benign_chat")),
        (
            "… with the direction added (it alone makes benign prompts refused)",
            m.get("refusal_rate_benign_with_addition"),
        ),
    ]
    return pd.DataFrame(rows, columns=["measurement", "value"]).set_index("measurement").round(3)


def why_table(metrics: Mapping[str, Mapping[str, float]]) -> pd.DataFrame:
    """Notebook 03's section 7 on benign_instruct: harmful rate of LoRA, SaLoRA and SaLoRA with
    the decision token in X_h, and the KL to the chat model at the first answer position
    against the later ones."""
    c = "benign_instruct"
    rows = []
    for name, slug in (
        ("LoRA", "lora"),
        ("SaLoRA", "salora"),
        ("SaLoRA, decision-token X_h", "salora_decision"),
    ):
        rows.append(
            {
                "model": name,
                "harmful rate": _mean_sd(metrics, "03", f"harmful_rate_{slug}_{c}"),
                "KL, first answer token": _get(metrics, "03", f"kl_first_token_{slug}_{c}"),
                "KL, later tokens (mean)": _get(metrics, "03", f"kl_later_tokens_{slug}_{c}"),
            }
        )
    return pd.DataFrame(rows).set_index("model").round(4)


# --- the README's results block, generated from a recorded run (never typed) -------------------

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def baseline_values(baseline: Mapping) -> dict[str, dict[str, float]]:
    """The recorded values of a regression baseline (``baselines/<profile>.json``)."""
    return {
        nb: {k: float(v["value"]) for k, v in keys.items()}
        for nb, keys in baseline["notebooks"].items()
    }


def readme_block(metrics: Mapping[str, Mapping[str, float]], source: str) -> str:
    """The README's results: plain LoRA's harmful rate per condition, then each method in its
    paper's regime (harmful rate and utility of LoRA → the method, random modules, verdict),
    from ``metrics`` (named by ``source``)."""
    lines = [
        BEGIN,
        f"<!-- generated by `python -m safealign_lib.studies.synthesis` from {source}; "
        "do not edit by hand -->",
        "",
        "| plain LoRA on | harmful rate (exact judge, mean ± sd over seeds) |",
        "|---|---|",
    ]
    erosion = erosion_table(metrics)
    lines += [f"| {c} | {row['harmful rate']} |" for c, row in erosion.iterrows()]
    lines += [
        "",
        "| method | regime | k | harmful rate: LoRA → method | random modules | utility: LoRA → "
        "method | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    table = methods_table(metrics)
    for (method, regime), r in table.iterrows():
        if regime not in PAPER_REGIMES:
            continue
        lines.append(
            f"| {method} | {regime} | {r['k']} | {r['LoRA harmful rate']} → "
            f"{r['method harmful rate']} | "
            f"{r['random-k harmful rate']} | {r['LoRA utility']:.3f} → {r['method utility']:.3f} "
            f"| {r['verdict']} |"
        )
    lines += [
        "",
        "k: modules acted on, chosen on validation (0: the adapter is left as LoRA trained it; "
        "SPLoRA as released prunes all but k − 1). Verdicts: the course's one criterion in "
        "notebooks 03 and 05; void where LoRA's utility is less than 0.25 above the chat "
        "model's, so that deleting the adapter would pass as a repair (the testbed's first "
        "check).",
    ]
    tb = testbed_table(metrics)
    if not tb.empty:
        lines += [
            "",
            "On the testbed (a fine-tune that teaches the chat model new steps; "
            "`preregistration.md`; seeds 0–4), judged by the one criterion over the (condition, "
            "seed) pairs of the valid conditions (one verdict per method, shown on each row):",
            "",
            "| method | condition (valid testbed?) | k | harmful rate: LoRA → method | random "
            "modules | utility: chat / LoRA → method | verdict |",
            "|---|---|---|---|---|---|---|",
        ]
        for (method, c), r in tb.iterrows():
            lines.append(
                f"| {method} | {c} ({r['valid testbed']}) | {r['k']} | "
                f"{r['LoRA harmful rate']} → {r['method harmful rate']} | "
                f"{r['random-k harmful rate']} | {r['chat utility']:.3f} / "
                f"{r['LoRA utility']:.3f} → {r['method utility']:.3f} | {r['verdict']} |"
            )
    return "\n".join([*lines, "", END])


def update_readme(readme: str, block: str) -> str:
    """``readme`` with the text between the results markers replaced by ``block``."""
    if BEGIN not in readme or END not in readme:
        raise ValueError(f"The README has no {BEGIN} … {END} markers to fill.")
    head, rest = readme.split(BEGIN, 1)
    return head + block + rest.split(END, 1)[1]


def main(argv: list[str] | None = None) -> int:
    """Rewrite the README's results block from a baseline file (default: the cpu baseline)."""
    import argparse
    import json
    from pathlib import Path

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--readme", default="README.md")
    ap.add_argument("--baseline", default="baselines/cpu.json")
    args = ap.parse_args(argv)
    values = baseline_values(json.loads(Path(args.baseline).read_text()))
    path = Path(args.readme)
    path.write_text(update_readme(path.read_text(), readme_block(values, args.baseline)))
    print(f"{path}: results block rewritten from {args.baseline}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
